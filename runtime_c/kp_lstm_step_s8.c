/*
 * kp_lstm_step_s8.c - one KP-LSTM time step (see kp_lstm_step_s8.h).
 */
#include "kp_lstm_step_s8.h"

#include "kp_activation_s16.h"
#include "kp_common.h"

/*
 * The gates, unit by unit: g[4u + k] = act_k(z) for gate row r = k*H + u, act = sigmoid for i, f, o (k = 0,
 * 1, 3) and tanh for g (k = 2), z = sat16(bias[r] + rq(ax[r], mult_x, shift_x) + rq(ah[r], mult_h, shift_h)):
 * requantization, bias, saturation and activation in one pass, (i, f, g, o) of a unit side by side for the
 * cell update. rq(acc, m, s) = rsr(acc * m, s) is one rounding high multiply of acc * 2^(32-s) by m
 * (kp_gate_rq); the quantizer keeps every partial sum in int32 (kpgen.quant.limits.kernel_limits).
 * Helium: four rows per step (VRMULH, VADD, clamp, gathering table load, scattering halfword store).
 */
static KP_STAGE void kp_lstm_gates_s16(const kp_lstm_params_s8 *p, const int32_t *ax, const int32_t *ah,
                                       int32_t *gates)
{
    kp_half_t *const g = (kp_half_t *)gates;
    const int32_t hs = p->hidden_size;
    const int32_t *bias = p->bias;
    const int32_t mx = p->mult_x;
    const int32_t mh = p->mult_h;
    const int32_t sx = p->shift_x;
    const int32_t sh = p->shift_h;
    int32_t k, u;
    for (k = 0; k < 4; k++) {
        const int16_t *tab = k == 2 ? p->tanh_table : p->sigmoid_table;
        const int16_t *mid = tab + KP_ACT_TABLE_SIZE / 2;
        kp_half_t *gk = g + k;
        u = 0;
#if defined(KP_MVE)
        {
            const int32x4_t vmx = vdupq_n_s32(mx);
            const int32x4_t vmh = vdupq_n_s32(mh);
            const int32x4_t lx = vdupq_n_s32(32 - sx);
            const int32x4_t lh = vdupq_n_s32(32 - sh);
            const int32x4_t lo = vdupq_n_s32(INT16_MIN);
            const int32x4_t hi = vdupq_n_s32(INT16_MAX);
            const uint32x4_t offs = vmulq_n_u32(vidupq_n_u32(0, 1), 4); /* halfword offsets 0, 4, 8, 12 */
            for (; u + 4 <= hs; u += 4) {
                const int32x4_t tx = vrmulhq_s32(vshlq_s32(vldrwq_s32(ax + u), lx), vmx);
                const int32x4_t th = vrmulhq_s32(vshlq_s32(vldrwq_s32(ah + u), lh), vmh);
                const int32x4_t z = vminq_s32(vmaxq_s32(vaddq_s32(vaddq_s32(vldrwq_s32(bias + u), th), tx), lo), hi);
                const uint32x4_t idx = vreinterpretq_u32_s32(vshrq_n_s32(vaddq_n_s32(z, 32768), KP_ACT_SHIFT));
                vstrhq_scatter_shifted_offset_s32(gk + 4 * u, offs, vldrhq_gather_shifted_offset_s32(tab, idx));
            }
        }
#endif
        if (hs - u >= 2) { /* two rows a step, each pair of operands one LDRD */
            const int32_t *px = ax + u, *ph = ah + u, *pb = bias + u;
            const int32_t *const px_end = px + ((hs - u) & ~(int32_t)1);
            kp_half_t *pg = gk + 4 * u;
            if (sx == 32 && sh == 32) { /* the usual case: no pre-shift (each step worth < 0.5 of Q3.12) */
                do {
                    int32_t x0, x1, h0, h1, b0, b1, z0, z1;
                    px = kp_ld2(px, &x0, &x1);
                    ph = kp_ld2(ph, &h0, &h1);
                    pb = kp_ld2(pb, &b0, &b1);
                    z0 = kp_ssat16(kp_mlahr(x0, mx, kp_mlahr(h0, mh, b0)));
                    z1 = kp_ssat16(kp_mlahr(x1, mx, kp_mlahr(h1, mh, b1)));
                    pg[0] = (int16_t)kp_act_s16(z0, mid);
                    pg[4] = (int16_t)kp_act_s16(z1, mid);
                    pg += 8;
                } while (px != px_end);
            } else {
                do {
                    int32_t x0, x1, h0, h1, b0, b1, z0, z1;
                    px = kp_ld2(px, &x0, &x1);
                    ph = kp_ld2(ph, &h0, &h1);
                    pb = kp_ld2(pb, &b0, &b1);
                    z0 = kp_ssat16(kp_gate_rq(x0, mx, sx, kp_gate_rq(h0, mh, sh, b0)));
                    z1 = kp_ssat16(kp_gate_rq(x1, mx, sx, kp_gate_rq(h1, mh, sh, b1)));
                    pg[0] = (int16_t)kp_act_s16(z0, mid);
                    pg[4] = (int16_t)kp_act_s16(z1, mid);
                    pg += 8;
                } while (px != px_end);
            }
            u += (hs - u) & ~(int32_t)1;
        }
        if (u < hs) {
            const int32_t z = kp_ssat16(kp_gate_rq(ax[u], mx, sx, kp_gate_rq(ah[u], mh, sh, bias[u])));
            gk[4 * u] = (int16_t)kp_act_s16(z, mid);
        }
        ax += hs;
        ah += hs;
        bias += hs;
    }
}

/*
 * c' = sat16(rsr(f * c, 15) + rsr(i * g, 30 - cf)); c12 = c' in Q3.12; h' = sat8(rsr(o * tanh(c12), 23)).
 * Every product of two int16 values plus its rounding term fits int32, so rsr is a plain add and shift.
 * c12 is rsr(c', cf - 12) for cf >= 12 (an int16 again) and sat16(c' * 2^(12 - cf)) below: a loop each.
 * A unit's gates are two words, (i, f) and (g, o): the DSP path multiplies their halves in place (SMLATB,
 * SMLABB).
 */
#if defined(KP_DSP)
#define KP_CELL_UNIT(C12)                                                                                     \
    do {                                                                                                      \
        int32_t w0, w1, cn, t;                                                                                \
        gw = kp_ld2(gw, &w0, &w1); /* (i, f), (g, o) */                                                       \
        cn = kp_ssat16((__smlatb(w0, *c, r15) >> 15) + (__smlabb(w0, w1, ig_half) >> ig_shift));              \
        t = kp_act_s16(C12, tanh_mid);                                                                        \
        *h++ = (int8_t)kp_ssat8(__smlatb(w1, t, r23) >> 23);                                                  \
        *c++ = (int16_t)cn;                                                                                   \
    } while (0)
#else
#define KP_CELL_UNIT(C12)                                                                                     \
    do {                                                                                                      \
        int32_t w0, w1, cn, t;                                                                                \
        gw = kp_ld2(gw, &w0, &w1); /* (i, f), (g, o) */                                                       \
        cn = kp_sat16(((kp_hi16(w0) * *c + r15) >> 15) + ((kp_lo16(w0) * kp_lo16(w1) + ig_half) >> ig_shift)); \
        t = kp_act_s16(C12, tanh_mid);                                                                        \
        *h++ = kp_sat8((kp_hi16(w1) * t + r23) >> 23);                                                        \
        *c++ = (int16_t)cn;                                                                                   \
    } while (0)
#endif

static KP_STAGE void kp_lstm_cell_s16(const int32_t *gw, int32_t hs, int32_t cf, const int16_t *tanh_tab,
                                      int8_t *h, int16_t *c)
{
    const int16_t *tanh_mid = tanh_tab + KP_ACT_TABLE_SIZE / 2;
    const int32_t ig_shift = 30 - cf;
    const int32_t ig_half = (int32_t)1 << (29 - cf);
    const int32_t r15 = (int32_t)1 << 14;
    const int32_t r23 = (int32_t)1 << 22;
    int16_t *const end = c + hs;
    if (cf >= 12) {
        const int32_t c_sh = cf - 12;
        const int32_t c_half = cf > 12 ? (int32_t)1 << (cf - 13) : 0;
        while (c != end) {
            KP_CELL_UNIT((cn + c_half) >> c_sh);
        }
    } else {
        const int32_t c_up = 12 - cf;
        while (c != end) {
            KP_CELL_UNIT(kp_ssat16(cn * (1 << c_up)));
        }
    }
}
#undef KP_CELL_UNIT

/* Both mat-vecs run first (they read the old h), then the gates, then the state update. */
void kp_lstm_step_s8(const kp_lstm_params_s8 *p, const int8_t *x, int8_t *h, int16_t *c,
                     const kp_lstm_scratch_s8 *s)
{
    const int32_t hs = p->hidden_size;
    kp_matvec_s8(&p->wx, x, s->tv, s->acc_x);
    kp_matvec_s8(&p->wh, h, s->tv, s->acc_h);
    kp_lstm_gates_s16(p, s->acc_x, s->acc_h, s->gates);
    kp_lstm_cell_s16(s->gates, hs, p->cell_frac, p->tanh_table, h, c);
}
