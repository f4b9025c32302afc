/*
 * kp_lstm_step_s8.c - one KP-LSTM time step (see kp_lstm_step_s8.h).
 */
#include "kp_lstm_step_s8.h"

#include "kp_activation_s16.h"
#include "kp_common.h"
#include "kp_matvec_s8.h"

/* Gate pre-activation z[idx] in Q3.12: both requantized accumulators plus the bias, summed in int64. */
static int16_t kp_gate_z(const kp_lstm_params_s8 *p, const int32_t *acc_x, const int32_t *acc_h, int32_t idx)
{
    const int64_t s = (int64_t)kp_requantize(acc_x[idx], p->mult_x, p->shift_x) +
                      (int64_t)kp_requantize(acc_h[idx], p->mult_h, p->shift_h) + (int64_t)p->bias[idx];
    return kp_sat16(kp_sat32(s));
}

/*
 * Both mat-vecs run first (they read the old h), then each unit r updates c[r] and h[r] from its four
 * gates z[r], z[H+r], z[2H+r], z[3H+r]. All products of Q0.15 values fit int32.
 */
void kp_lstm_step_s8(const kp_lstm_params_s8 *p, const int8_t *x, int8_t *h, int16_t *c,
                     int32_t *acc_x, int32_t *acc_h, int16_t *t_scratch)
{
    const int32_t hs = p->hidden_size;
    const int32_t cf = p->cell_frac;
    int32_t r;

    kp_matvec_s8(p->ax, p->ax_rows, p->ax_cols, p->bx, p->bx_rows, p->bx_cols, x, p->tx_shift, t_scratch,
                 acc_x);
    kp_matvec_s8(p->ah, p->ah_rows, p->ah_cols, p->bh, p->bh_rows, p->bh_cols, h, p->th_shift, t_scratch,
                 acc_h);

    for (r = 0; r < hs; r++) {
        const int32_t gi = kp_sigmoid_s16(kp_gate_z(p, acc_x, acc_h, r), p->sigmoid_table);
        const int32_t gf = kp_sigmoid_s16(kp_gate_z(p, acc_x, acc_h, hs + r), p->sigmoid_table);
        const int32_t gg = kp_tanh_s16(kp_gate_z(p, acc_x, acc_h, 2 * hs + r), p->tanh_table);
        const int32_t go = kp_sigmoid_s16(kp_gate_z(p, acc_x, acc_h, 3 * hs + r), p->sigmoid_table);
        const int16_t c_new = kp_sat16(kp_rsr32(gf * (int32_t)c[r], 15) + kp_rsr32(gi * gg, 30 - cf));
        int16_t c12;
        if (cf >= 12) {
            c12 = (int16_t)kp_rsr32(c_new, cf - 12);
        } else {
            c12 = kp_sat16((int32_t)c_new * ((int32_t)1 << (12 - cf)));
        }
        h[r] = kp_sat8(kp_rsr32(go * (int32_t)kp_tanh_s16(c12, p->tanh_table), 23));
        c[r] = c_new;
    }
}
