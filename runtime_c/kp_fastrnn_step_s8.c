/*
 * kp_fastrnn_step_s8.c - one FastRNN time step (see kp_fastrnn_step_s8.h).
 */
#include "kp_fastrnn_step_s8.h"

#include "kp_activation_s16.h"
#include "kp_common.h"

#if defined(__GNUC__)
#define KP_FAST_INLINE static inline __attribute__((always_inline))
#else
#define KP_FAST_INLINE static inline
#endif

/*
 * FastRNN, unit by unit: h~ = tanh(sat16(rq(ax) + rq(ah) + bias)), h' = sat8(rsr(rsr(alpha h~, 8 + e) + beta h, 15)),
 * e = state_exp in 0..7 (h is Q(e).(7-e)). With alpha, beta in 0..32767, |h~| <= 32768 and h in -128..127:
 * |alpha h~| < 2^30 (rounding term 2^(7+e) <= 2^14), |rsr(alpha h~, 8 + e)| <= 2^22, |beta h| < 2^22, so the
 * outer sum and its rounding term 2^14 stay below 2^24. sx, sh: literal 32 in the usual case (the accumulator's
 * pre-shift folds away).
 */
KP_FAST_INLINE void kp_fastrnn_units(const kp_fastrnn_params_s8 *p, const int32_t *ax, const int32_t *ah, int8_t *h,
                                     int32_t sx, int32_t sh)
{
    const int32_t hs = p->hidden_size;
    const int32_t mx = p->mult_x;
    const int32_t mh = p->mult_h;
    const int32_t alpha = p->alpha;
    const int32_t beta = p->beta;
    const int32_t se = 8 + p->state_exp;
    const int32_t re = (int32_t)1 << (se - 1);
    const kp_bias_t *bias = p->bias;
    const int16_t *tanh_mid = p->tanh_table + KP_ACT_TABLE_SIZE / 2;
    int32_t u;
    for (u = 0; u < hs; u++) {
        const int32_t ht = kp_act_sat_s16(kp_gate_rq(ax[u], mx, sx, kp_gate_rq(ah[u], mh, sh, bias[u])), tanh_mid);
        h[u] = (int8_t)kp_ssat8((((alpha * ht + re) >> se) + beta * h[u] + ((int32_t)1 << 14)) >> 15);
    }
}

static KP_STAGE void kp_fastrnn_cell_s8(const kp_fastrnn_params_s8 *p, const int32_t *ax, const int32_t *ah, int8_t *h)
{
    if (p->shift_x == 32 && p->shift_h == 32) {
        kp_fastrnn_units(p, ax, ah, h, 32, 32);
    } else {
        kp_fastrnn_units(p, ax, ah, h, p->shift_x, p->shift_h);
    }
}

/* Both mat-vecs run first (they read the old h), then the units update h in place. */
void kp_fastrnn_step_s8(const kp_fastrnn_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s)
{
    kp_matvec_s8(&p->wx, x, s->tv, s->acc_x);
    kp_matvec_s8(&p->wh, h, s->tv, s->acc_h);
    kp_fastrnn_cell_s8(p, s->acc_x, s->acc_h, h);
}
