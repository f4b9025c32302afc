/*
 * kp_matvec_internal.h - the inner loops and stage kernels behind kp_matvec_s8 (not part of the public API).
 *
 * The multiply-accumulates run on factors packed by kpgen/codegen/layout.py:
 *   kp_blocks_dot  an int8 matrix in 4-row blocks times one int16 vector: the dense matrix-vector product,
 *                  and A T when T has one column (m2 == 1). Four accumulators share each vector load.
 *                  Also X B^T: B in blocks against each widened row of X, rounded into T.
 *   kp_widen       an int8 vector widened (scaled, rounded, saturated) into the int16 vector a matrix reads.
 * The stages are functions of their own (one a file) so an instruction profile names them:
 *   kp_dense_x_s16   dense mode, step 1: x widened (times b00, rounded) into the int16 vector
 *   kp_kron_xbt_s8   step 1 (Kronecker): X widened, T^T = rsr(B X^T) rounded and saturated into int16
 *   kp_kron_at_s8    step 2: A T, and the dense matrix-vector product
 *   kp_kron_deep_s8  more than two factors: the mode-product chain built from the stages above
 *   kp_hkp_top_s8    hybrid KP: the dense top rows
 * Each code path (portable, KP_DSP, KP_MVE: kp_common.h) lives in the same function under its feature macro,
 * and every path sums the same products exactly in int32, so all give the same bits.
 */
#ifndef KP_MATVEC_INTERNAL_H
#define KP_MATVEC_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "kp_common.h"
#include "kp_matvec_s8.h"

/* Forced inlining specialises the loops per call site; a size build (-Os) lets the compiler share them. */
#if defined(__GNUC__) && !defined(__OPTIMIZE_SIZE__)
#define KP_INLINE static inline __attribute__((always_inline))
#else
#define KP_INLINE static inline
#endif

/*
 * out (cols_p / 2 words) = the int16 vector a matrix with cols_p padded columns multiplies, in the path's
 * order (kp_vslot): element j = sat16(rsr(x[j] * mul, shift)) for j < n, zero padding after.
 * n: 0..cols_p; cols_p: kp_cols_padded of a count >= n; mul: -128..128; shift: any (<= 0: no rounding).
 */
KP_INLINE void kp_widen(const int8_t *x, int32_t n, int32_t cols_p, int32_t mul, int32_t shift, int32_t *out)
{
    int32_t k = 0;
    const int32_t words = cols_p >> 1;
    if (mul == 1 && shift == 0) {
#if defined(KP_MVE)
        for (; k < words; k += 4) {
            const int32_t left = n - 2 * k;
            const int16x8_t v = vldrbq_z_s16(x + 2 * k, vctp16q((uint32_t)(left > 0 ? left : 0)));
            vstrwq_p_s32(out + k, vreinterpretq_s32_s16(v), vctp32q((uint32_t)(words - k)));
        }
        return;
#elif defined(KP_DSP)
        if (cols_p > 2 && n >= 4) {
            const int8_t *const xend = x + (n & ~(int32_t)3);
            const int8_t *xp = x;
            int32_t *op = out;
            do {
                int32_t xw;
                memcpy(&xw, xp, 4);
                xp += 4;
                op[0] = __sxtb16(xw);       /* (x[4g], x[4g+2]) */
                op[1] = kp_sxtb16_ror8(xw); /* (x[4g+1], x[4g+3]) */
                op += 2;
            } while (xp != xend);
            k = (n & ~(int32_t)3) >> 1;
        }
#else
        /* Portable: natural order, each pair of inputs sign-extended into one word. */
        for (; 2 * k + 1 < n; k++) {
            out[k] = kp_pack16(x[2 * k], x[2 * k + 1]);
        }
#endif
    }
    {
        /* |x[j] * mul| <= 2^14, so rsr by any shift >= 16 is 0, as by 16, and adding the rounding term first
         * cannot overflow: the shift is checked once, not per element. */
        const int32_t s = shift < 0 ? 0 : (shift > 16 ? 16 : shift);
        const int32_t half = kp_round_half(s);
        for (; k < words; k++) {
            const int32_t j0 = kp_vslot(2 * k, cols_p);
            const int32_t j1 = kp_vslot(2 * k + 1, cols_p);
            const int32_t e0 = j0 < n ? kp_sat16(((int32_t)x[j0] * mul + half) >> s) : 0;
            const int32_t e1 = j1 < n ? kp_sat16(((int32_t)x[j1] * mul + half) >> s) : 0;
            out[k] = kp_pack16(e0, e1);
        }
    }
}

#if defined(KP_DSP) && defined(KP_ARM_ASM)
/*
 * One row of a DSP chunk: 8 int8 weights (two words, one LDRD) against the vector words v0..v3 (slot order),
 * SXTB16 / SXTB16 ROR #8 and four SMLAD into acc. One asm statement per row keeps each row's nine
 * instructions together: GCC's -O2 pre-allocation scheduler would otherwise hoist the four rows' loads and
 * extensions ahead of their SMLADs and spill. The partial sums rotate through the temporaries, so a whole
 * 4-row chunk needs 14 registers: 4 sums, 4 vector words, 3 pointers or counters and 3 temporaries.
 */
#define KP_ROW8(acc)                                                                                          \
    do {                                                                                                      \
        int32_t w0_, w1_, t_;                                                                                 \
        __asm__("ldrd %[w0], %[w1], [%[wp]], #8\n\t"                                                          \
                "sxtb16 %[t], %[w0]\n\t"                                                                      \
                "smlad %[t], %[t], %[v0], %[a]\n\t"                                                           \
                "sxtb16 %[w0], %[w0], ror #8\n\t"                                                             \
                "smlad %[w0], %[w0], %[v1], %[t]\n\t"                                                         \
                "sxtb16 %[t], %[w1]\n\t"                                                                      \
                "smlad %[t], %[t], %[v2], %[w0]\n\t"                                                          \
                "sxtb16 %[w1], %[w1], ror #8\n\t"                                                             \
                "smlad %[a], %[w1], %[v3], %[t]"                                                              \
                : [a] "+r"(acc), [wp] "+r"(wp), [w0] "=&r"(w0_), [w1] "=&r"(w1_), [t] "=&r"(t_)               \
                : [v0] "r"(v0), [v1] "r"(v1), [v2] "r"(v2), [v3] "r"(v3), "m"(*(const kp_word2_t *)wp));      \
    } while (0)

/* One row of a 4-column DSP chunk (one word), the same way. */
#define KP_ROW4(acc)                                                                                          \
    do {                                                                                                      \
        int32_t w0_, t_;                                                                                      \
        __asm__("ldr %[w0], [%[wp]], #4\n\t"                                                                  \
                "sxtb16 %[t], %[w0]\n\t"                                                                      \
                "smlad %[t], %[t], %[v0], %[a]\n\t"                                                           \
                "sxtb16 %[w0], %[w0], ror #8\n\t"                                                             \
                "smlad %[a], %[w0], %[v1], %[t]"                                                              \
                : [a] "+r"(acc), [wp] "+r"(wp), [w0] "=&r"(w0_), [t] "=&r"(t_)                                \
                : [v0] "r"(v0), [v1] "r"(v1), "m"(*wp));                                                      \
    } while (0)
#elif defined(KP_DSP)
/* One row of a DSP chunk: 8 int8 weights (two words) against the vector words v0..v3 (slot order). */
#define KP_ROW8(acc)                                                                                          \
    do {                                                                                                      \
        int32_t w0_, w1_;                                                                                     \
        wp = kp_ld2(wp, &w0_, &w1_);                                                                          \
        acc = __smlad(__sxtb16(w0_), v0, acc);                                                                \
        acc = __smlad(kp_sxtb16_ror8(w0_), v1, acc);                                                          \
        acc = __smlad(__sxtb16(w1_), v2, acc);                                                                \
        acc = __smlad(kp_sxtb16_ror8(w1_), v3, acc);                                                          \
    } while (0)

/* One row of a 4-column DSP chunk. */
#define KP_ROW4(acc)                                                                                          \
    do {                                                                                                      \
        const int32_t w0_ = *wp++;                                                                            \
        acc = __smlad(__sxtb16(w0_), v0, acc);                                                                \
        acc = __smlad(kp_sxtb16_ror8(w0_), v1, acc);                                                          \
    } while (0)
#endif

#if defined(KP_MVE) && defined(KP_ARM_ASM)
typedef struct {
    int8_t b[16];
} kp_bytes16_t;
#endif

/*
 * The four sums of one block of a matrix with cols_p > 2 padded columns, each started from init:
 * s[r] = init + sum_c W[r][c] * v[c] for the block's rows r = 0..3. A block is a run of chunks (8 columns, the
 * last maybe 4) with each row's bytes contiguous (kpgen.codegen.layout.pack_blocks); v: cols_p int16 in kp_vslot order.
 *   DSP: per row word, SXTB16 gives bytes (0, 2), SXTB16 ROR #8 bytes (1, 3); SMLAD with the vector pairs.
 *   Helium: VLDRB.S16 of a row's 8 bytes, VMLADAVA.S16 against the vector's 8 lanes (predicated 4-col tail).
 * Pre: every partial sum fits int32 (kpgen.quant.limits.kernel_limits).
 */
KP_INLINE void kp_block_sums(const int32_t *w, int32_t cols_p, const int32_t *v, int32_t init, int32_t *s)
{
    int32_t a0 = init, a1 = init, a2 = init, a3 = init;
#if defined(KP_MVE) && defined(KP_ARM_ASM)
    const int8_t *wp8 = (const int8_t *)w;
    const int32_t *vp = v;
    int32_t k;
    /*
     * One asm loop (DLS/LE) per block: VLDRW of the vector chunk, then per row VLDRB.S16 with write-back (a
     * low register, l) and VMLADAVA.S16 into an even register (Te). GCC 12 spends two more instructions per
     * chunk on the same intrinsics (register moves around the even-register constraint): the #elif below.
     */
    k = cols_p >> 3;
    if (k > 0) {
        __asm__ volatile("dls lr, %[n]\n"
                         "1:\n\t"
                         "vldrw.u32 q0, [%[vp]], #16\n\t"
                         "vldrb.s16 q1, [%[wp]], #8\n\tvmlava.s16 %[a0], q1, q0\n\t"
                         "vldrb.s16 q1, [%[wp]], #8\n\tvmlava.s16 %[a1], q1, q0\n\t"
                         "vldrb.s16 q1, [%[wp]], #8\n\tvmlava.s16 %[a2], q1, q0\n\t"
                         "vldrb.s16 q1, [%[wp]], #8\n\tvmlava.s16 %[a3], q1, q0\n\t"
                         "le lr, 1b"
                         : [a0] "+Te"(a0), [a1] "+Te"(a1), [a2] "+Te"(a2), [a3] "+Te"(a3), [wp] "+l"(wp8),
                           [vp] "+r"(vp)
                         : [n] "r"(k)
                         : "q0", "q1", "lr", "memory");
    }
    if (cols_p & 4) { /* rows of 4 bytes: 8 are loaded, lanes 4..7 meet zeros (the layout pads one word) */
        const int16x8_t vv = vreinterpretq_s16_s32(vldrwq_z_s32(vp, vctp32q(2)));
        __asm__("vldrb.s16 q1, [%[wp]], #4\n\tvmlava.s16 %[a0], q1, %q[vv]\n\t"
                "vldrb.s16 q1, [%[wp]], #4\n\tvmlava.s16 %[a1], q1, %q[vv]\n\t"
                "vldrb.s16 q1, [%[wp]], #4\n\tvmlava.s16 %[a2], q1, %q[vv]\n\t"
                "vldrb.s16 q1, [%[wp]], #4\n\tvmlava.s16 %[a3], q1, %q[vv]"
                : [a0] "+Te"(a0), [a1] "+Te"(a1), [a2] "+Te"(a2), [a3] "+Te"(a3), [wp] "+l"(wp8)
                : [vv] "w"(vv), "m"(*(const kp_bytes16_t *)wp8)
                : "q1");
    }
#elif defined(KP_MVE)
    /* The same loop in intrinsics: per chunk one vector load, per row VLDRB.S16 and VMLADAVA.S16. */
    const int8_t *wp8 = (const int8_t *)w;
    const int32_t *vp = v;
    int32_t k;
    for (k = cols_p >> 3; k > 0; k--, vp += 4, wp8 += 32) {
        const int16x8_t vv = vreinterpretq_s16_s32(vldrwq_s32(vp));
        a0 = vmladavaq_s16(a0, vldrbq_s16(wp8), vv);
        a1 = vmladavaq_s16(a1, vldrbq_s16(wp8 + 8), vv);
        a2 = vmladavaq_s16(a2, vldrbq_s16(wp8 + 16), vv);
        a3 = vmladavaq_s16(a3, vldrbq_s16(wp8 + 24), vv);
    }
    if (cols_p & 4) { /* lanes 4..7 of the vector are zero; the layout pads one word after the block run */
        const int16x8_t vv = vreinterpretq_s16_s32(vldrwq_z_s32(vp, vctp32q(2)));
        a0 = vmladavaq_s16(a0, vldrbq_s16(wp8), vv);
        a1 = vmladavaq_s16(a1, vldrbq_s16(wp8 + 4), vv);
        a2 = vmladavaq_s16(a2, vldrbq_s16(wp8 + 8), vv);
        a3 = vmladavaq_s16(a3, vldrbq_s16(wp8 + 12), vv);
    }
#elif defined(KP_DSP)
    const int32_t *wp = w;
    const int32_t *vp = v;
    uint32_t k = (uint32_t)cols_p >> 3;
    for (; k != 0; k--) {
        int32_t v0, v1, v2, v3;
        vp = kp_ld2(vp, &v0, &v1);
        vp = kp_ld2(vp, &v2, &v3);
        KP_ROW8(a0);
        KP_ROW8(a1);
        KP_ROW8(a2);
        KP_ROW8(a3);
    }
    if (cols_p & 4) {
        const int32_t v0 = vp[0];
        const int32_t v1 = vp[1];
        KP_ROW4(a0);
        KP_ROW4(a1);
        KP_ROW4(a2);
        KP_ROW4(a3);
    }
#else
    /* Portable: the vector's int16 elements read in place (natural order), one multiply-add per weight. */
    const int8_t *wp8 = (const int8_t *)w;
    const kp_half_t *vh = (const kp_half_t *)v;
    const kp_half_t *const vend = vh + cols_p;
    while (vh != vend) {
        const int32_t width = vend - vh < 8 ? 4 : 8;
        int32_t j;
        for (j = 0; j < width; j++) {
            const int32_t e = vh[j];
            a0 += wp8[j] * e;
            a1 += wp8[width + j] * e;
            a2 += wp8[2 * width + j] * e;
            a3 += wp8[3 * width + j] * e;
        }
        wp8 += 4 * width;
        vh += width;
    }
#endif
    s[0] = a0;
    s[1] = a1;
    s[2] = a2;
    s[3] = a3;
}

/*
 * The four sums of one block of a 2-column matrix (word 0: rows 0 and 1, word 1: rows 2 and 3), each from
 * init: per block, SXTB16 of word 0 is row 0's (c0, c1), rotated row 1's; one SMUAD per row against v.
 * v: the vector's two int16 (c0 low, c1 high).
 */
KP_INLINE void kp_block_sums2(const int32_t *w, int32_t v, int32_t init, int32_t *s)
{
#if defined(KP_DSP)
    const int32_t w0 = w[0];
    const int32_t w1 = w[1];
    s[0] = __smlad(__sxtb16(w0), v, init);
    s[1] = __smlad(kp_sxtb16_ror8(w0), v, init);
    s[2] = __smlad(__sxtb16(w1), v, init);
    s[3] = __smlad(kp_sxtb16_ror8(w1), v, init);
#else
    const int8_t *b8 = (const int8_t *)w;
    const int32_t e0 = kp_lo16(v);
    const int32_t e1 = kp_hi16(v);
    s[0] = init + b8[0] * e0 + b8[2] * e1;
    s[1] = init + b8[1] * e0 + b8[3] * e1;
    s[2] = init + b8[4] * e0 + b8[6] * e1;
    s[3] = init + b8[5] * e0 + b8[7] * e1;
#endif
}

/*
 * Store the first n (1..4) of the sums s0..s3: int32 at y[0..n), or with t_mode rounded into T at
 * t_out[k * t_stride] as sat16(s_k >> ts) (the rounding term is already in the sums: kp_blocks_dot's init).
 * Scalars, not an array, so that the sums stay in registers. ts: 0..31.
 */
KP_INLINE void kp_block_store(int32_t s0, int32_t s1, int32_t s2, int32_t s3, int32_t n, int32_t *y,
                              int32_t t_mode, kp_half_t *t_out, int32_t t_stride, int32_t ts)
{
    if (t_mode) {
        t_out[0] = (int16_t)kp_ssat16(s0 >> ts);
        if (n > 1) {
            t_out[t_stride] = (int16_t)kp_ssat16(s1 >> ts);
        }
        if (n > 2) {
            t_out[2 * t_stride] = (int16_t)kp_ssat16(s2 >> ts);
        }
        if (n > 3) {
            t_out[3 * t_stride] = (int16_t)kp_ssat16(s3 >> ts);
        }
    } else {
        y[0] = s0;
        if (n > 1) {
            y[1] = s1;
        }
        if (n > 2) {
            y[2] = s2;
        }
        if (n > 3) {
            y[3] = s3;
        }
    }
}

/*
 * The blocks kernel: y[r] = sum_c W[r][c] * v[c] for r < rows, W (rows x cols int8) packed by
 * kpgen.codegen.layout.pack_blocks, v the int16 vector (kp_cols_padded(cols) elements in kp_vslot order). With t_mode
 * (X B^T) the sums are rounded into T instead: t_out[r * t_stride] = sat16(rsr(y[r], ts)), round half up.
 * rows >= 1, cols >= 1; ts: 0..31 in t_mode (0: no rounding). y: rows int32 (unused in t_mode).
 * Pre: every sum plus its rounding term fits int32 (kpgen.quant.limits.kernel_limits).
 */
KP_INLINE void kp_blocks_dot(const int32_t *w, int32_t rows, int32_t cols, const int32_t *v, int32_t *y,
                             int32_t t_mode, kp_half_t *t_out, int32_t t_stride, int32_t ts)
{
    const int32_t cols_p = kp_cols_padded(cols);
    const int32_t init = t_mode ? kp_round_half(ts) : 0; /* T's rounding term as the start */
    const int32_t *const w_full = w + (rows >> 2) * cols_p; /* a block is cols_p words */
    int32_t s[4];
    if (cols_p == 2) {
        const int32_t vv = v[0];
        for (; w != w_full; w += 2, y += 4, t_out += 4 * t_stride) {
            kp_block_sums2(w, vv, init, s);
            kp_block_store(s[0], s[1], s[2], s[3], 4, y, t_mode, t_out, t_stride, ts);
        }
        if (rows & 3) {
            kp_block_sums2(w, vv, init, s);
            kp_block_store(s[0], s[1], s[2], s[3], rows & 3, y, t_mode, t_out, t_stride, ts);
        }
        return;
    }
    for (; w != w_full; w += cols_p, y += 4, t_out += 4 * t_stride) {
        kp_block_sums(w, cols_p, v, init, s);
        kp_block_store(s[0], s[1], s[2], s[3], 4, y, t_mode, t_out, t_stride, ts);
    }
    if (rows & 3) {
        kp_block_sums(w, cols_p, v, init, s);
        kp_block_store(s[0], s[1], s[2], s[3], rows & 3, y, t_mode, t_out, t_stride, ts);
    }
}

/* Where column i of T sits in a row of T^T: the blocks kernel's order for m2 == 1, else the rows kernel's. */
KP_INLINE int32_t kp_tslot(int32_t i, int32_t n1_p, int32_t m2)
{
    return m2 == 1 ? kp_vslot(i, n1_p) : kp_vslot_rows(i, n1_p);
}

/*
 * Dense mode, step 1 (kp_dense_x_s16.c): tv = the int16 vector sat16(rsr(x[j] * b00, t_shift)) for j < n, in
 * the blocks kernel's order (kp_vslot), zero padded to kp_cols_padded(n) elements.
 * x: n int8 (1 <= n); b00: -128..127; t_shift: any (0: no rounding, >= 32: every element 0); tv:
 * kp_cols_padded(n) / 2 int32 words, which must not overlap x.
 */
void kp_dense_x_s16(const int8_t *x, int32_t n, int32_t b00, int32_t t_shift, int32_t *tv);

/*
 * Step 1 of a two-factor product (kp_kron_xbt_s8.c): T^T[q][kp_tslot(i)] = sat16(rsr(B[q] . X[i], t_shift))
 * for q < m2, i < n1, X[i][j] = x[i*n2 + j]; padding columns of T^T (n1 <= i < n1_p) are zero.
 * w: a two-factor kp_kron_s8 (B in 4-row blocks, n2 >= 2 or m2 >= 2), t_shift 0..31; x: n1*n2 int8.
 * tv: m2 * n1_p / 2 words of T^T, then kp_cols_padded(n2) / 2 words for one widened row of X
 * (kron_scratch_words in all). Pre: |B[q] . X[i]| + 2^(t_shift-1) < 2^31 (kpgen.quant.limits.kernel_limits).
 */
void kp_kron_xbt_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *tv);

/*
 * Step 2 (kp_kron_at_s8.c): y[p*m2 + q] = A[p] . T[:, q] in int32, exact (no rounding, no saturation), for
 * p < m1, q < m2. tt: T^T as kp_kron_xbt_s8 or kp_dense_x_s16 leave it (m2 rows of n1_p int16 in kp_tslot
 * order, zero padding); row: kp_cols_padded(n1) / 2 words of work area for one widened row of A (m2 > 1 only;
 * may be the row buffer after T^T); y: m1*m2 int32, which must not overlap tt or row.
 * Pre: n1 <= 511 and |T| <= 32768, so every sum fits int32 (kpgen.reference.golden.MAX_N1).
 */
void kp_kron_at_s8(const kp_kron_s8 *w, const int32_t *tt, int32_t *row, int32_t *y);

/*
 * A two-factor product (dense mode for B 1x1): all of kp_matvec_s8 for a matrix without inner or top.
 * scratch: kron_scratch_words(m1, n1, m2, n2) words; y: m1*m2 int32.
 */
KP_INLINE void kp_matvec2_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    const int32_t n1_p = kp_cols_padded(w->n1);
    if (w->m2 == 1 && w->n2 == 1) {
        kp_dense_x_s16(x, w->n1, ((const int8_t *)w->b)[0], w->t_shift, scratch);
        kp_kron_at_s8(w, scratch, scratch, y);
        return;
    }
    kp_kron_xbt_s8(w, x, scratch);
    kp_kron_at_s8(w, scratch, scratch + w->m2 * (n1_p >> 1), y); /* the row buffer reuses X's widened row */
}

/* Words of scratch kp_matvec2_s8 needs (kpgen.codegen.layout.kron_scratch_words). */
static inline int32_t kp_kron2_scratch_words(int32_t n1, int32_t m2, int32_t n2)
{
    const int32_t p1 = kp_cols_padded(n1);
    const int32_t p2 = kp_cols_padded(n2);
    if (m2 == 1 && n2 == 1) {
        return p1 / 2;
    }
    return (m2 * p1 + (p1 > p2 ? p1 : p2)) / 2;
}

/*
 * More than two factors (kp_kron_deep_s8.c): y = the chain's product with x, w->inner != NULL, at most
 * KP_MAX_FACTORS factors; scratch: kp_matvec_s8_get_buffer_size(w) words. Pre: kpgen.quant.limits.kernel_limits.
 */
void kp_kron_deep_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y);

/*
 * Hybrid KP (kp_hkp_top_s8.c): y[0 .. r) = the r = top->m1 dense rows times x, times 2^top_shift for
 * top_shift > 0 (mod 2^32: 0 for top_shift >= 32), rsr by -top_shift for top_shift < 0 (0 for <= -32).
 * top: a dense kp_kron_s8; scratch: kron_scratch_words(r, n1, 1, 1) words. Pre: the scaled sums fit int32
 * (the quantizer picks top_shift so).
 */
void kp_hkp_top_s8(const kp_kron_s8 *top, int32_t top_shift, const int8_t *x, int32_t *scratch, int32_t *y);

#endif /* KP_MATVEC_INTERNAL_H */
