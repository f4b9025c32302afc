/*
 * kp_fastgrnn_step_s8.c - one FastGRNN time step (see kp_fastgrnn_step_s8.h).
 */
#include "kp_fastgrnn_step_s8.h"

#include "kp_activation_s16.h"
#include "kp_common.h"

#if defined(__GNUC__)
#define KP_FAST_INLINE static inline __attribute__((always_inline))
#else
#define KP_FAST_INLINE static inline
#endif

/*
 * FastGRNN, unit by unit: pre = rq(ax) + rq(ah); z = sigmoid(sat16(pre + bias_z)); h~ = tanh(sat16(pre + bias_h));
 * g = rsr(zeta (32768 - z), 15) + nu, computed as ((zeta 2^15 + 2^14 - zeta z) >> 15) + nu (the same number);
 * h' = sat8(rsr(rsr(g h~, 8 + e) + z h, 15)), e = state_exp in 0..7. g <= 32767 + 32767 = 65534 (z >= 0) and
 * h~ in -32768..32767, so g h~ lies in -2147418112 .. 2147352578 and with its rounding term 2^(7+e) <= 2^14 still
 * below 2^31 - 1 (by 114685); |rsr(g h~, 8 + e)| <= 2^23 and |z h| < 2^22, so the outer sum fits easily.
 */
KP_FAST_INLINE void kp_fastgrnn_units(const kp_fastgrnn_params_s8 *p, const int32_t *ax, const int32_t *ah,
                                      int8_t *h, int32_t sx, int32_t sh)
{
    const int32_t hs = p->hidden_size;
    const int32_t mx = p->mult_x;
    const int32_t mh = p->mult_h;
    const int32_t zeta = p->zeta;
    const int32_t nu = p->nu;
    const int32_t gz = zeta * 32768 + ((int32_t)1 << 14);
    const int32_t se = 8 + p->state_exp;
    const int32_t re = (int32_t)1 << (se - 1);
    const kp_bias_t *bias_z = p->bias_z;
    const kp_bias_t *bias_h = p->bias_h;
    const int16_t *sig = p->sigmoid_table + KP_ACT_TABLE_SIZE / 2;
    const int16_t *tanh_mid = p->tanh_table + KP_ACT_TABLE_SIZE / 2;
    int32_t u;
    for (u = 0; u < hs; u++) {
        const int32_t pre = kp_gate_rq(ax[u], mx, sx, kp_gate_rq(ah[u], mh, sh, 0));
        const int32_t z = kp_act_sat_s16(pre + bias_z[u], sig);
        const int32_t ht = kp_act_sat_s16(pre + bias_h[u], tanh_mid);
        const int32_t g = ((gz - zeta * z) >> 15) + nu;
        h[u] = (int8_t)kp_ssat8((((g * ht + re) >> se) + z * h[u] + ((int32_t)1 << 14)) >> 15);
    }
}

static KP_STAGE void kp_fastgrnn_cell_s8(const kp_fastgrnn_params_s8 *p, const int32_t *ax, const int32_t *ah,
                                         int8_t *h)
{
    if (p->shift_x == 32 && p->shift_h == 32) {
        kp_fastgrnn_units(p, ax, ah, h, 32, 32);
    } else {
        kp_fastgrnn_units(p, ax, ah, h, p->shift_x, p->shift_h);
    }
}

/* Both mat-vecs run first (they read the old h), then the units update h in place. */
void kp_fastgrnn_step_s8(const kp_fastgrnn_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s)
{
    kp_matvec_s8(&p->wx, x, s->tv, s->acc_x);
    kp_matvec_s8(&p->wh, h, s->tv, s->acc_h);
    kp_fastgrnn_cell_s8(p, s->acc_x, s->acc_h, h);
}
