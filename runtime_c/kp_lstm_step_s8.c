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
 * The saturation and the entry index are one SSAT of the shifted sum (kp_act_sat_s16). DSP cores: four rows a step
 * in the usual case (shift 32), two otherwise. Helium: eight rows a step in int16 lanes in the usual case, four in
 * int32 lanes otherwise (VRMULH, VADD, saturation, gathering table load, scattering halfword store). Armv6-M: two
 * light loops (kp_lstm_gates_low).
 */
#if defined(__ARM_ARCH_6M__) || defined(KP_MUL16)
#define KP_GATES_LOW_REGS 1
#if defined(__GNUC__)
#define KP_LSTM_INLINE static inline __attribute__((always_inline))
#else
#define KP_LSTM_INLINE static inline
#endif
/*
 * c + ((a m + 2^31) >> 32) (kp_mlahr) for m in 0..2^31-1 given as its halves mh = m >> 16, ml = m & 0xFFFF,
 * from four 16 x 16 products on a core without a 64-bit multiply. With ah = a >> 16, al = a & 0xFFFF (unsigned),
 * x = ah ml, y = al mh, q = al ml: a m + 2^31 = 2^32 ah mh + 2^16 (x + y) + q + 2^31, so the high word is
 * ah mh + (x >> 16) + (((x & 0xFFFF) + y + (q >> 16) + 2^15) >> 16); |x| < 2^31, y < 2^31 and the last sum is
 * below 2^31 + 2^18, so it fits uint32. One product and one carry fewer than kp_mlahr's general form.
 */
KP_LSTM_INLINE int32_t kp_mlahr_halves(int32_t a, int32_t mh, int32_t ml, int32_t c)
{
    const int32_t ah = a >> 16;
    const uint32_t al = (uint32_t)a & 0xFFFFu;
    const int32_t x = ah * ml;
    const uint32_t lo = ((uint32_t)x & 0xFFFFu) + al * (uint32_t)mh + ((al * (uint32_t)ml) >> 16) + 0x8000u;
    return (int32_t)((uint32_t)c + (uint32_t)(ah * mh + (x >> 16)) + (lo >> 16));
}

/*
 * The gate pass of cores with eight low registers (Armv6-M): two light loops per gate instead of one heavy one,
 * so the multipliers' halves and the pointers stay in registers. First ah[r] = rq(ah[r]) + bias[r] in place (ah
 * is this step's scratch), then g = act(sat16(rq(ax[r]) + ah[r])): the same sums in the same order. sx, sh: literal
 * 32 in the usual case (no pre-shift).
 */
KP_LSTM_INLINE void kp_lstm_gates_low(const kp_lstm_params_s8 *p, const int32_t *ax, int32_t *ah, kp_half_t *g,
                                      int32_t sx, int32_t sh)
{
    const int32_t hs = p->hidden_size;
    const int32_t mxh = p->mult_x >> 16, mxl = p->mult_x & 0xFFFF;
    const int32_t mhh = p->mult_h >> 16, mhl = p->mult_h & 0xFFFF;
    const kp_bias_t *bias = p->bias;
    int32_t k;
    for (k = 0; k < 4; k++) {
        const int16_t *mid = (k == 2 ? p->tanh_table : p->sigmoid_table) + KP_ACT_TABLE_SIZE / 2;
        int32_t *ph = ah;
        const int32_t *px = ax;
        const int32_t *const ph_end = ah + hs;
        kp_half_t *pg = g + k;
        while (ph != ph_end) {
            *ph = kp_mlahr_halves(kp_scale_pow2(*ph, 32 - sh), mhh, mhl, *bias++);
            ph++;
        }
        ph = ah;
        while (ph != ph_end) {
            *pg = (int16_t)kp_act_sat_s16(kp_mlahr_halves(kp_scale_pow2(*px++, 32 - sx), mxh, mxl, *ph++), mid);
            pg += 4;
        }
        ax += hs;
        ah += hs;
    }
}
#endif

/*
 * Two consecutive gate biases, widened to int32: *a = p[0], *b = p[1]; returns p + 2. int32 biases: one LDRD
 * (kp_ld2). int16 (KP_BIAS16): two post-indexed LDRSH on the DSP cores (one instruction each; the compiler's own
 * code adds a pointer increment), plain loads elsewhere.
 */
static inline const kp_bias_t *kp_bias_ld2(const kp_bias_t *p, int32_t *a, int32_t *b)
{
#if !defined(KP_BIAS16)
    return kp_ld2(p, a, b);
#elif defined(KP_DSP) && defined(KP_ARM_ASM)
    int32_t x, y;
    __asm__("ldrsh %0, [%2], #2\n\tldrsh %1, [%2], #2"
            : "=&r"(x), "=&r"(y), "+r"(p)
            : "m"(*(const int16_t(*)[2])p));
    *a = x;
    *b = y;
    return p;
#else
    *a = p[0];
    *b = p[1];
    return p + 2;
#endif
}

#if defined(KP_MVE)
/* Four gate biases as int32 lanes: VLDRW, or for int16 biases the widening VLDRH.S32 (one instruction either way). */
static inline int32x4_t kp_bias_ld4(const kp_bias_t *p)
{
#if defined(KP_BIAS16)
    return vldrhq_s32(p);
#else
    return vldrwq_s32(p);
#endif
}
#endif

/* Rows u and u + 1 of gate k: Z0, Z1 are the unsaturated gate sums of the loaded operands (x, h, b)0 and 1. */
#define KP_GATE_PAIR(Z0, Z1)                                                                                  \
    do {                                                                                                      \
        int32_t x0, x1, h0, h1, b0, b1;                                                                       \
        px = kp_ld2(px, &x0, &x1);                                                                            \
        ph = kp_ld2(ph, &h0, &h1);                                                                            \
        pb = kp_bias_ld2(pb, &b0, &b1);                                                                       \
        pg[0] = (int16_t)kp_act_sat_s16(Z0, mid);                                                             \
        pg[4] = (int16_t)kp_act_sat_s16(Z1, mid);                                                             \
        pg += 8;                                                                                              \
    } while (0)

static KP_STAGE void kp_lstm_gates_s16(const kp_lstm_params_s8 *p, const int32_t *ax, int32_t *ah,
                                       int32_t *gates)
{
#if defined(KP_GATES_LOW_REGS)
    if (p->shift_x == 32 && p->shift_h == 32) {
        kp_lstm_gates_low(p, ax, ah, (kp_half_t *)gates, 32, 32);
    } else {
        kp_lstm_gates_low(p, ax, ah, (kp_half_t *)gates, p->shift_x, p->shift_h);
    }
#else
    kp_half_t *const g = (kp_half_t *)gates;
    const int32_t hs = p->hidden_size;
    const kp_bias_t *bias = p->bias;
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
#if !defined(KP_ACT_INTERP_SHIFT)
            if (sx == 32 && sh == 32) {
                /*
                 * The usual case, eight rows a step in int16 lanes: no pre-shift; VQMOVNB / VQMOVNT saturate rows
                 * u..u+3 into the even lanes and u+4..u+7 into the odd ones (the SSAT), one shift and one add make
                 * the entries, one gather and one scatter (offsets in that lane order) move them.
                 */
                static const uint16_t lane_rows[8] = {0, 16, 4, 20, 8, 24, 12, 28};
                const uint16x8_t offs8 = vldrhq_u16(lane_rows);
                const kp_bias_t *pb = bias; /* a pointer of its own: no register copies for either bias width */
                for (; u + 8 <= hs; u += 8, pb += 8) {
                    const int32x4_t ha = vrmulhq_s32(vldrwq_s32(ah + u), vmh);
                    const int32x4_t hb = vrmulhq_s32(vldrwq_s32(ah + u + 4), vmh);
                    const int32x4_t xa = vrmulhq_s32(vldrwq_s32(ax + u), vmx);
                    const int32x4_t xb = vrmulhq_s32(vldrwq_s32(ax + u + 4), vmx);
                    const int32x4_t za = vaddq_s32(vaddq_s32(kp_bias_ld4(pb), ha), xa);
                    const int32x4_t zb = vaddq_s32(vaddq_s32(kp_bias_ld4(pb + 4), hb), xb);
                    const int16x8_t z = vqmovntq_s32(vqmovnbq_s32(vuninitializedq_s16(), za), zb);
                    const uint16x8_t idx = vreinterpretq_u16_s16(vaddq_n_s16(vshrq_n_s16(z, KP_ACT_SHIFT), 512));
                    vstrhq_scatter_shifted_offset_s16(gk + 4 * u, offs8, vldrhq_gather_shifted_offset_s16(tab, idx));
                }
            }
#endif
            for (; u + 4 <= hs; u += 4) {
                const int32x4_t tx = vrmulhq_s32(vshlq_s32(vldrwq_s32(ax + u), lx), vmx);
                const int32x4_t th = vrmulhq_s32(vshlq_s32(vldrwq_s32(ah + u), lh), vmh);
                const int32x4_t z = vminq_s32(vmaxq_s32(vaddq_s32(vaddq_s32(kp_bias_ld4(bias + u), th), tx), lo), hi);
                const int32x4_t zu = vaddq_n_s32(z, 32768);
                const uint32x4_t idx = vreinterpretq_u32_s32(vshrq_n_s32(zu, KP_ACT_SHIFT));
#if defined(KP_ACT_INTERP_SHIFT) /* a + rsr((b - a) f, s) with VRSHR (kp_act_s16) */
                const int32x4_t fr = vandq_s32(zu, vdupq_n_s32(((int32_t)1 << KP_ACT_SHIFT) - 1));
                const int32x4_t ka = vldrhq_gather_shifted_offset_s32(tab, idx);
                const int32x4_t kb = vldrhq_gather_shifted_offset_s32(tab + 1, idx);
                const int32x4_t v = vaddq_s32(ka, vrshrq_n_s32(vmulq_s32(vsubq_s32(kb, ka), fr), KP_ACT_SHIFT));
#else
                const int32x4_t v = vldrhq_gather_shifted_offset_s32(tab, idx);
#endif
                vstrhq_scatter_shifted_offset_s32(gk + 4 * u, offs, v);
            }
        }
#endif
        if (hs - u >= 2) { /* two rows a step, each pair of operands one LDRD */
            const int32_t *px = ax + u, *ph = ah + u;
            const kp_bias_t *pb = bias + u;
            const int32_t *const px_end = px + ((hs - u) & ~(int32_t)1);
            kp_half_t *pg = gk + 4 * u;
            if (sx == 32 && sh == 32) { /* the usual case: no pre-shift (each step worth < 0.5 of Q3.12) */
#define KP_GATE_PAIR32 KP_GATE_PAIR(kp_mlahr(x0, mx, kp_mlahr(h0, mh, b0)), kp_mlahr(x1, mx, kp_mlahr(h1, mh, b1)))
#if defined(KP_BIAS16)
                /* eight rows a step: half the loop overhead pays for the second bias load of each pair */
                const int32_t *const px_end8 = px + ((hs - u) & ~(int32_t)7);
                while (px != px_end8) {
                    KP_GATE_PAIR32;
                    KP_GATE_PAIR32;
                    KP_GATE_PAIR32;
                    KP_GATE_PAIR32;
                }
                while (px != px_end) {
                    KP_GATE_PAIR32;
                }
#else
                const int32_t *const px_end4 = px + ((hs - u) & ~(int32_t)3);
                while (px != px_end4) { /* four rows a step: less loop overhead per row */
                    KP_GATE_PAIR32;
                    KP_GATE_PAIR32;
                }
                if (px != px_end) {
                    KP_GATE_PAIR32;
                }
#endif
#undef KP_GATE_PAIR32
            } else {
                do {
                    KP_GATE_PAIR(kp_gate_rq(x0, mx, sx, kp_gate_rq(h0, mh, sh, b0)),
                                 kp_gate_rq(x1, mx, sx, kp_gate_rq(h1, mh, sh, b1)));
                } while (px != px_end);
            }
            u += (hs - u) & ~(int32_t)1;
        }
        if (u < hs) {
            gk[4 * u] = (int16_t)kp_act_sat_s16(kp_gate_rq(ax[u], mx, sx, kp_gate_rq(ah[u], mh, sh, bias[u])), mid);
        }
        ax += hs;
        ah += hs;
        bias += hs;
    }
#endif
}

#undef KP_GATE_PAIR

/*
 * c' = sat16(rsr(f * c, 15) + rsr(i * g, 30 - cf)); c12 = c' in Q3.12; h' = sat8(rsr(o * tanh(c12), 23)).
 * Every product of two int16 values plus its rounding term fits int32, so rsr is a plain add and shift.
 * c12 is rsr(c', cf - 12) for cf >= 12 (an int16 again) and sat16(c' * 2^(12 - cf)) below: a loop each.
 * With the 1024-entry table, tanh(c12) is entry c12 >> 6: for cf >= 12 that is (c' + half) >> (cf - 12 + 6),
 * one shift; below, sat10((c' * 2^(12 - cf)) >> 6) (kp_act_sat_s16).
 * A unit's gates are two words, (i, f) and (g, o): the DSP path multiplies their halves in place (SMLATB,
 * SMLABB).
 */
#if defined(KP_DSP)
#define KP_CELL_UNIT(TANH)                                                                                    \
    do {                                                                                                      \
        int32_t w0, w1, cn, t;                                                                                \
        gw = kp_ld2(gw, &w0, &w1); /* (i, f), (g, o) */                                                       \
        cn = kp_ssat16((__smlatb(w0, *c, r15) >> 15) + (__smlabb(w0, w1, ig_half) >> ig_shift));              \
        t = TANH;                                                                                             \
        *h++ = (int8_t)kp_ssat8(__smlatb(w1, t, r23) >> 23);                                                  \
        *c++ = (int16_t)cn;                                                                                   \
    } while (0)
#else
#define KP_CELL_UNIT(TANH)                                                                                    \
    do {                                                                                                      \
        int32_t w0, w1, cn, t;                                                                                \
        gw = kp_ld2(gw, &w0, &w1); /* (i, f), (g, o) */                                                       \
        cn = kp_sat16(((kp_hi16(w0) * *c + r15) >> 15) + ((kp_lo16(w0) * kp_lo16(w1) + ig_half) >> ig_shift)); \
        t = TANH;                                                                                             \
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
#if defined(KP_MVE) && !defined(KP_ACT_INTERP_SHIFT)
    /*
     * Helium, eight units a step: VLD4 splits the gates into i, f, g and o vectors; the products are widened
     * (VMULLB / VMULLT: even and odd units), rounded by VRSHR / VRSHL and narrowed with saturation (VQMOVN) to
     * c'; c12 by a rounding (cf >= 12) or saturating (cf < 12) shift of the int16 lanes; tanh(c12) by a gathering
     * load; h' by VRSHR and a clamp to int8 after narrowing. The same numbers as the loop below.
     */
    {
        const int16_t *const tab = tanh_tab;
        const int32x4_t ig_sh = vdupq_n_s32(-ig_shift);
        const int16x8_t c_sh = vdupq_n_s16((int16_t)(12 - cf)); /* VRSHL by -(cf - 12), VQSHL by 12 - cf */
        const int16x8_t lo8 = vdupq_n_s16(INT8_MIN);
        const int16x8_t hi8 = vdupq_n_s16(INT8_MAX);
        while (end - c >= 8) {
            const int16x8x4_t gv = vld4q_s16((const int16_t *)gw); /* i, f, g, o of eight units */
            const int16x8_t cv = vldrhq_s16(c);
            const int32x4_t cb = vaddq_s32(vrshrq_n_s32(vmullbq_int_s16(gv.val[1], cv), 15),
                                           vrshlq_s32(vmullbq_int_s16(gv.val[0], gv.val[2]), ig_sh));
            const int32x4_t ct = vaddq_s32(vrshrq_n_s32(vmulltq_int_s16(gv.val[1], cv), 15),
                                           vrshlq_s32(vmulltq_int_s16(gv.val[0], gv.val[2]), ig_sh));
            const int16x8_t cn = vqmovntq_s32(vqmovnbq_s32(vuninitializedq_s16(), cb), ct);
            const int16x8_t c12 = cf >= 12 ? vrshlq_s16(cn, c_sh) : vqshlq_s16(cn, c_sh);
            const uint16x8_t idx = vreinterpretq_u16_s16(vaddq_n_s16(vshrq_n_s16(c12, KP_ACT_SHIFT), 512));
            const int16x8_t t = vldrhq_gather_shifted_offset_s16(tab, idx);
            const int32x4_t hb = vrshrq_n_s32(vmullbq_int_s16(gv.val[3], t), 23); /* |o t| <= 2^30: -128..128 */
            const int32x4_t ht = vrshrq_n_s32(vmulltq_int_s16(gv.val[3], t), 23);
            const int16x8_t hv = vmovntq_s32(vmovnbq_s32(vuninitializedq_s16(), hb), ht);
            vstrbq_s16(h, vminq_s16(vmaxq_s16(hv, lo8), hi8));
            vstrhq_s16(c, cn);
            gw += 16;
            c += 8;
            h += 8;
        }
    }
#endif
    if (cf >= 12) {
        const int32_t c_sh = cf - 12;
        const int32_t c_half = cf > 12 ? (int32_t)1 << (cf - 13) : 0;
#if defined(KP_ACT_INTERP_SHIFT)
        while (c != end) {
            KP_CELL_UNIT(kp_act_s16((cn + c_half) >> c_sh, tanh_mid));
        }
#else
        const int32_t c_sh6 = c_sh + KP_ACT_SHIFT;
        while (c != end) {
            KP_CELL_UNIT(tanh_mid[(cn + c_half) >> c_sh6]);
        }
#endif
    } else {
        const int32_t c_up = 12 - cf;
        while (c != end) {
            KP_CELL_UNIT(kp_act_sat_s16(cn * (1 << c_up), tanh_mid));
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
