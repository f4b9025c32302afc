/*
 * kp_gru_step_s8.c - one KP-GRU time step (see kp_gru_step_s8.h).
 */
#include "kp_gru_step_s8.h"

#include "kp_activation_s16.h"
#include "kp_common.h"

#if defined(__GNUC__)
#define KP_GRU_INLINE static inline __attribute__((always_inline))
#else
#define KP_GRU_INLINE static inline
#endif

/*
 * All units, one at a time: r, z and n from the rows u, H + u and 2H + u of both accumulators, then h'[u].
 * rq(acc) + c is kp_gate_rq (one rounding high multiply, SMMLAR on the DSP cores); sx and sh are literal 32 in
 * the usual case, so the pre-shift of the accumulator folds away. Every partial sum stays in int32
 * (kpgen.quant.limits.kernel_limits): r, z: |bias| + |gx| + |gh|; n: |bias_n| + |gx| + 32768, |bias_hn| + |gh|.
 * h' = sat8(rsr(z * (h << 8) + (32768 - z) * n, 23)) is computed as 32768 n + z ((h << 8) - n), the same
 * number: z in 0..32767 weighs two values of magnitude <= 32768, so the sum is at most 2^30 in magnitude and
 * z * ((h << 8) - n) < 32767 * 65536.
 */
KP_GRU_INLINE void kp_gru_units(const kp_gru_params_s8 *p, const int32_t *ax, const int32_t *ah, int8_t *h,
                                int32_t sx, int32_t sh)
{
    const int32_t hs = p->hidden_size;
    const int32_t mx = p->mult_x;
    const int32_t mh = p->mult_h;
    const kp_bias_t *bias = p->bias;
    const kp_bias_t *bias_hn = p->bias_hn;
    const int16_t *sig = p->sigmoid_table + KP_ACT_TABLE_SIZE / 2;
    const int16_t *tanh_mid = p->tanh_table + KP_ACT_TABLE_SIZE / 2;
    const int8_t *const h_end = h + hs;
    /* every operand by a pointer that walks with the unit: GCC then keeps int16 biases (KP_BIAS16) in registers */
    for (; h != h_end; h++, ax++, ah++, bias++, bias_hn++) {
        const int32_t r = kp_act_sat_s16(kp_gate_rq(ax[0], mx, sx, kp_gate_rq(ah[0], mh, sh, bias[0])), sig);
        const int32_t z = kp_act_sat_s16(kp_gate_rq(ax[hs], mx, sx, kp_gate_rq(ah[hs], mh, sh, bias[hs])), sig);
        const int32_t hn = kp_ssat16(kp_gate_rq(ah[2 * hs], mh, sh, bias_hn[0]));
        const int32_t rn = (r * hn + ((int32_t)1 << 14)) >> 15;
        const int32_t n = kp_act_sat_s16(kp_gate_rq(ax[2 * hs], mx, sx, bias[2 * hs] + rn), tanh_mid);
        const int32_t d = (int32_t)h[0] * 256 - n;
        h[0] = (int8_t)kp_ssat8((n * 32768 + z * d + ((int32_t)1 << 22)) >> 23);
    }
}

/* Requantize, gates and state update in one pass over the units (named in a profile). */
static KP_STAGE void kp_gru_cell_s8(const kp_gru_params_s8 *p, const int32_t *ax, const int32_t *ah, int8_t *h)
{
    if (p->shift_x == 32 && p->shift_h == 32) {
        kp_gru_units(p, ax, ah, h, 32, 32);
    } else {
        kp_gru_units(p, ax, ah, h, p->shift_x, p->shift_h);
    }
}

/* Both mat-vecs run first (they read the old h), then the units update h in place. */
void kp_gru_step_s8(const kp_gru_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s)
{
    kp_matvec_s8(&p->wx, x, s->tv, s->acc_x);
    kp_matvec_s8(&p->wh, h, s->tv, s->acc_h);
    kp_gru_cell_s8(p, s->acc_x, s->acc_h, h);
}
