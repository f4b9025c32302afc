/*
 * kp_rnn_step_s8.c - one plain RNN time step, tanh or relu (see kp_rnn_step_s8.h).
 */
#include "kp_rnn_step_s8.h"

#include "kp_activation_s16.h"
#include "kp_common.h"

#if defined(__GNUC__)
#define KP_RNN_INLINE static inline __attribute__((always_inline))
#else
#define KP_RNN_INLINE static inline
#endif

/*
 * Unit by unit: s = bias + rq(ah) + rq(ax) (the quantizer proves |bias| + worst |rq(ax)| + worst |rq(ah)| fits
 * int32, and for relu also with the rounding term 2^7 added). tanh: h' = sat8((tanh(sat16(s)) + 2^7) >> 8), the
 * Q0.15 table value -32768..32767 rounded to Q0.7 (at most 128, saturated to 127). relu: h' = sat8((max(s, 0) +
 * 2^7) >> 8). sx, sh: literal 32 in the usual case (the accumulator's pre-shift folds away).
 */
KP_RNN_INLINE void kp_rnn_units(const kp_rnn_params_s8 *p, const int32_t *ax, const int32_t *ah, int8_t *h,
                                int32_t sx, int32_t sh)
{
    const int32_t hs = p->hidden_size;
    const int32_t mx = p->mult_x;
    const int32_t mh = p->mult_h;
    const kp_bias_t *bias = p->bias;
    const int32_t half = (int32_t)1 << 7; /* rounding term of >> 8 */
    int32_t u;
    if (p->relu) {
        for (u = 0; u < hs; u++) {
            const int32_t v = kp_gate_rq(ax[u], mx, sx, kp_gate_rq(ah[u], mh, sh, bias[u]));
            h[u] = (int8_t)kp_ssat8(((v > 0 ? v : 0) + half) >> 8);
        }
    } else {
        const int16_t *tanh_mid = p->tanh_table + KP_ACT_TABLE_SIZE / 2;
        for (u = 0; u < hs; u++) {
            const int32_t v = kp_gate_rq(ax[u], mx, sx, kp_gate_rq(ah[u], mh, sh, bias[u]));
            h[u] = (int8_t)kp_ssat8((kp_act_sat_s16(v, tanh_mid) + half) >> 8);
        }
    }
}

static KP_STAGE void kp_rnn_cell_s8(const kp_rnn_params_s8 *p, const int32_t *ax, const int32_t *ah, int8_t *h)
{
    if (p->shift_x == 32 && p->shift_h == 32) {
        kp_rnn_units(p, ax, ah, h, 32, 32);
    } else {
        kp_rnn_units(p, ax, ah, h, p->shift_x, p->shift_h);
    }
}

/* Both mat-vecs run first (they read the old h), then the units update h in place. */
void kp_rnn_step_s8(const kp_rnn_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s)
{
    kp_matvec_s8(&p->wx, x, s->tv, s->acc_x);
    kp_matvec_s8(&p->wh, h, s->tv, s->acc_h);
    kp_rnn_cell_s8(p, s->acc_x, s->acc_h, h);
}
