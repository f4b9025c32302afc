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
 *   kp_hkp_top_s8    hybrid KP: the dense top rows (and kp_hkp_spread_s32: spread over the gates)
 * Each code path (portable, KP_DSP, KP_MVE: kp_common.h) lives in the same function under its feature macro,
 * and every path sums the same products exactly in int32, so all give the same bits.
 * The stages' loops are inline bodies (kp_xbt_body, kp_at_body) that kp_kron2_fixed also instantiates with
 * constant shapes: the kernels the emitter gives each two-factor matrix (templates/kp_matrix.j2), which
 * kp_matvec_s8 runs through kp_matvec_fixed_s8. Those kernels read B as int16 pairs on DSP cores without Helium
 * (kp_blocks16_tt); Armv6-M reads the blocks layout biased by 128 (KP_BIASED_BLOCKS, kp_common.h).
 */
#ifndef KP_MATVEC_INTERNAL_H
#define KP_MATVEC_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "kp_common.h"
#include "kp_matvec_s8.h"

/*
 * Complete unrolling of the short loops whose trip counts are constants in the shape-specialised kernels
 * (kp_kron2_fixed): a GCC pragma, left out of size builds and of other compilers.
 */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__OPTIMIZE_SIZE__)
#define KP_PRAGMA(x) _Pragma(#x)
#define KP_UNROLL_FIXED KP_PRAGMA(GCC unroll 8)
#else
#define KP_UNROLL_FIXED
#endif

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
#elif defined(KP_BIASED_BLOCKS)
    /*
     * Armv6-M: the weights are u = w + 128 (0..255), one LDRB with an immediate offset each, so
     * sum w e = sum u e - 128 sum e; the caller takes the 128 sum e off init (kp_blocks_dot). Unsigned
     * arithmetic wraps like the exact sum, which fits int32, so the result is exact. One load, multiply and add
     * per weight, the columns unrolled so that every offset is an immediate.
     */
    const uint8_t *wp8 = (const uint8_t *)w;
    const kp_half_t *vh = (const kp_half_t *)v;
    uint32_t u0 = (uint32_t)init, u1 = u0, u2 = u0, u3 = u0;
    int32_t k;
#if defined(__ARM_ARCH_6M__) && defined(KP_ARM_ASM)
    /* One asm statement per column (GCC's Thumb-1 inline asm syntax is the divided one): otherwise GCC 12 loads
     * the eight vector elements of a chunk first and spills them. 14 instructions per 4 multiply-adds. */
#define KP_COLU(j, width)                                                                                     \
    do {                                                                                                      \
        int32_t e_, t_;                                                                                       \
        __asm__("ldrh %[e], [%[v], #%c[oe]]\n\tsxth %[e], %[e]\n\t"                                          \
                "ldrb %[t], [%[w], #%c[o0]]\n\tmul %[t], %[e]\n\tadd %[u0], %[t]\n\t"                         \
                "ldrb %[t], [%[w], #%c[o1]]\n\tmul %[t], %[e]\n\tadd %[u1], %[t]\n\t"                         \
                "ldrb %[t], [%[w], #%c[o2]]\n\tmul %[t], %[e]\n\tadd %[u2], %[t]\n\t"                         \
                "ldrb %[t], [%[w], #%c[o3]]\n\tmul %[t], %[e]\n\tadd %[u3], %[t]"                               \
                : [u0] "+r"(u0), [u1] "+r"(u1), [u2] "+r"(u2), [u3] "+r"(u3), [e] "=&l"(e_), [t] "=&l"(t_)    \
                : [v] "l"(vh), [w] "l"(wp8), [oe] "n"(2 * (j)), [o0] "n"(j), [o1] "n"((width) + (j)),          \
                  [o2] "n"(2 * (width) + (j)), [o3] "n"(3 * (width) + (j))                                     \
                : "cc", "memory");                                                                            \
    } while (0)
#else
#define KP_COLU(j, width)                                                                                     \
    do {                                                                                                      \
        const int32_t e_ = vh[j];                                                                             \
        u0 += (uint32_t)(wp8[j] * e_);                                                                        \
        u1 += (uint32_t)(wp8[(width) + (j)] * e_);                                                            \
        u2 += (uint32_t)(wp8[2 * (width) + (j)] * e_);                                                        \
        u3 += (uint32_t)(wp8[3 * (width) + (j)] * e_);                                                        \
    } while (0)
#endif
    for (k = cols_p >> 3; k > 0; k--, wp8 += 32, vh += 8) {
        KP_COLU(0, 8);
        KP_COLU(1, 8);
        KP_COLU(2, 8);
        KP_COLU(3, 8);
        KP_COLU(4, 8);
        KP_COLU(5, 8);
        KP_COLU(6, 8);
        KP_COLU(7, 8);
    }
    if (cols_p & 4) {
        KP_COLU(0, 4);
        KP_COLU(1, 4);
        KP_COLU(2, 4);
        KP_COLU(3, 4);
    }
#undef KP_COLU
    a0 = (int32_t)u0;
    a1 = (int32_t)u1;
    a2 = (int32_t)u2;
    a3 = (int32_t)u3;
#else
    /*
     * Portable (Armv7-M without DSP, the host): each weight word and vector word is loaded once, the four int8
     * weights taken out of it by shifts (byte 0 SXTB, byte 3 one ASR, bytes 1 and 2 LSL and ASR), the vector's
     * int16 pairs by SXTH and ASR; one multiply-add per weight. A row's words in a chunk of 8 columns are 2
     * apart, in the last chunk of 4 one.
     */
    const int32_t *wp = w;
    const int32_t *vp = v;
    int32_t k;
#define KP_DOT4(acc, wv)                                                                                      \
    do {                                                                                                      \
        const uint32_t u_ = (uint32_t)(wv);                                                                   \
        acc += (int32_t)(int8_t)u_ * e0 + ((int32_t)(u_ << 16) >> 24) * e1 + ((int32_t)(u_ << 8) >> 24) * e2 + \
               ((int32_t)u_ >> 24) * e3;                                                                      \
    } while (0)
    for (k = cols_p >> 3; k > 0; k--, wp += 8, vp += 4) {
        int32_t h;
        for (h = 0; h < 2; h++) {
            const int32_t p0 = vp[2 * h], p1 = vp[2 * h + 1];
            const int32_t e0 = kp_lo16(p0), e1 = kp_hi16(p0), e2 = kp_lo16(p1), e3 = kp_hi16(p1);
            KP_DOT4(a0, wp[h]);
            KP_DOT4(a1, wp[2 + h]);
            KP_DOT4(a2, wp[4 + h]);
            KP_DOT4(a3, wp[6 + h]);
        }
    }
    if (cols_p & 4) {
        const int32_t p0 = vp[0], p1 = vp[1];
        const int32_t e0 = kp_lo16(p0), e1 = kp_hi16(p0), e2 = kp_lo16(p1), e3 = kp_hi16(p1);
        KP_DOT4(a0, wp[0]);
        KP_DOT4(a1, wp[1]);
        KP_DOT4(a2, wp[2]);
        KP_DOT4(a3, wp[3]);
    }
#undef KP_DOT4
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
    const int32_t e0 = kp_lo16(v);
    const int32_t e1 = kp_hi16(v);
    s[0] = init + kp_block_byte(w, 0) * e0 + kp_block_byte(w, 2) * e1;
    s[1] = init + kp_block_byte(w, 1) * e0 + kp_block_byte(w, 3) * e1;
    s[2] = init + kp_block_byte(w, 4) * e0 + kp_block_byte(w, 6) * e1;
    s[3] = init + kp_block_byte(w, 5) * e0 + kp_block_byte(w, 7) * e1;
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
    int32_t init = t_mode ? kp_round_half(ts) : 0; /* T's rounding term as the start */
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
#if defined(KP_BIASED_BLOCKS)
    { /* the weights' bias, 128 times the vector's sum, off every row's start (kp_block_sums) */
        const kp_half_t *vh = (const kp_half_t *)v;
        uint32_t es = 0;
        int32_t j;
        for (j = 0; j < cols_p; j++) {
            const int32_t e = vh[j];
            es += (uint32_t)e;
        }
        init = (int32_t)((uint32_t)init - (es << 7));
    }
#endif
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
 * Each row of X widened to int16 once, then the blocks kernel runs B (packed in blocks) against it, rounding
 * each sum into its element of T^T (a column of T^T per row of X). The padding columns of T^T (i >= n1) are
 * zero. Scratch: T^T (m2 rows of n1_p / 2 words), then one widened row of X. The int16 stores into T^T do not
 * touch x (KP_RESTRICT says so).
 */
KP_INLINE void kp_xbt_body(const int32_t *b, int32_t n1, int32_t m2, int32_t n2, int32_t ts, const int8_t *KP_RESTRICT x,
                           int32_t *KP_RESTRICT tv)
{
    const int32_t n1_p = kp_cols_padded(n1);
    const int32_t n2_p = kp_cols_padded(n2);
    int32_t *const row = tv + m2 * (n1_p >> 1);
    kp_half_t *const tt = (kp_half_t *)tv;
    int32_t i, q;

    for (i = 0; i < n1; i++) {
        kp_widen(x + i * n2, n2, n2_p, 1, 0, row);
        kp_blocks_dot(b, m2, n2, row, row, 1, tt + kp_tslot(i, n1_p, m2), n1_p, ts);
    }
    for (; i < n1_p; i++) {
        kp_half_t *out = tt + kp_tslot(i, n1_p, m2);
        for (q = 0; q < m2; q++, out += n1_p) {
            *out = 0;
        }
    }
}

/*
 * Row r of an int8 matrix packed in rows (kpgen.codegen.layout.pack_rows), widened to cols_p / 2 words in the rows
 * kernel's order (kp_vslot_rows): the DSP pairs of SXTB16 on every core that has them, Helium ones included.
 */
KP_INLINE void kp_widen_row(const int32_t *w, int32_t r, int32_t cols_p, int32_t *v)
{
    int32_t k;
    if (cols_p == 2) {
#if defined(KP_DSP)
        const int32_t word = w[r >> 1];
        v[0] = (r & 1) ? kp_sxtb16_ror8(word) : __sxtb16(word);
#else
        const int8_t *b = (const int8_t *)(w + (r >> 1)) + (r & 1);
        v[0] = kp_pack16(b[0], b[2]);
#endif
        return;
    }
    w += r * (cols_p >> 2);
#if defined(KP_DSP)
    {
        const int32_t *const end = w + (cols_p >> 2);
        (void)k;
        do {
            const int32_t word = *w++;
            v[0] = __sxtb16(word);
            v[1] = kp_sxtb16_ror8(word);
            v += 2;
        } while (w != end);
    }
#else
    {
        const int8_t *b = (const int8_t *)w;
        for (k = 0; k < (cols_p >> 1); k++) {
            v[k] = kp_pack16(b[2 * k], b[2 * k + 1]);
        }
    }
#endif
}

/*
 * Dot product of two int16 vectors of `words` words (pairs): sum over k of lo(m[k]) * lo(v[k]) + hi(m[k]) *
 * hi(v[k]), exact in int32. DSP (Helium cores too: the rows kernel's short dot products gain nothing from
 * predicated vector loads): SMLAD per word, unrolled for 1, 2, 4 and 8 words.
 */
KP_INLINE int32_t kp_dot_words(const int32_t *m, const int32_t *v, int32_t words)
{
    int32_t k, d = 0;
#if defined(KP_DSP)
    switch (words) {
    case 1:
        return __smuad(m[0], v[0]);
    case 2:
        return __smlad(m[1], v[1], __smuad(m[0], v[0]));
    case 4:
        return __smlad(m[3], v[3], __smlad(m[2], v[2], __smlad(m[1], v[1], __smuad(m[0], v[0]))));
    case 8:
        d = __smlad(m[3], v[3], __smlad(m[2], v[2], __smlad(m[1], v[1], __smuad(m[0], v[0]))));
        return __smlad(m[7], v[7], __smlad(m[6], v[6], __smlad(m[5], v[5], __smlad(m[4], v[4], d))));
    default:
        break;
    }
    for (k = 0; k + 2 <= words; k += 2) {
        d = __smlad(m[k], v[k], d);
        d = __smlad(m[k + 1], v[k + 1], d);
    }
    if (k < words) {
        d = __smlad(m[k], v[k], d);
    }
#else
    for (k = 0; k < words; k++) {
        d += kp_lo16(m[k]) * kp_lo16(v[k]) + kp_hi16(m[k]) * kp_hi16(v[k]);
    }
#endif
    return d;
}

/*
 * Step 2 (kp_kron_at_s8, and the shape-specialised kernels: kp_kron2_fixed): y[p*m2 + q] = A[p] . T[:, q]. With m2 == 1 (and in dense mode) A is in blocks and T one vector:
 * the blocks kernel. Otherwise A is in rows: each row of A, widened once (into registers on the DSP path for
 * up to 8 columns), against the m2 rows of T^T, whose outputs are consecutive.
 */
KP_INLINE void kp_at_body(const int32_t *a, int32_t m1, int32_t n1, int32_t m2, const int32_t *tt, int32_t *row,
                          int32_t *y)
{
    const int32_t n1_p = kp_cols_padded(n1);
    const int32_t words = n1_p >> 1;
    int32_t p, q;
    if (m2 == 1) {
        kp_blocks_dot(a, m1, n1, tt, y, 0, (kp_half_t *)0, 0, 0);
        return;
    }
#if defined(KP_MVE)
    if (n1_p > 2) {
        /* Helium: a row of A as int16 lanes (VLDRB.S16, predicated to the row for 4 columns), one VMLADAV per
         * output against a row of T^T (natural order: kp_vslot_rows), chunks of 8 lanes. */
        const int8_t *ap = (const int8_t *)a;
        (void)row;
        p = 0;
        if (n1_p == 8) {
            /* Two rows of A against two rows of T^T: each T^T row loaded once for both A rows, four VMLADAV, the
             * outputs stored in pairs. */
            for (p = 0; p + 2 <= m1; p += 2, ap += 16, y += 2 * m2) {
                const int16x8_t va = vldrbq_s16(ap);
                const int16x8_t vb = vldrbq_s16(ap + 8);
                const int16_t *t = (const int16_t *)tt;
                int32_t *y0 = y, *y1 = y + m2;
#if defined(KP_ARM_ASM)
                /* One asm statement per four outputs: GCC 12 adds register moves around VMLADAV's even-register
                 * destinations and stores them one by one; here two VLDRH, four VMLADAV, two STRD. */
                for (q = 0; q + 2 <= m2; q += 2) {
                    int32_t d0, d1, d2, d3;
                    __asm__ volatile("vldrh.s16 q0, [%[t]], #32\n\t"
                                     "vldrh.s16 q1, [%[t], #-16]\n\t"
                                     "vmladav.s16 %[d0], %q[va], q0\n\t"
                                     "vmladav.s16 %[d1], %q[va], q1\n\t"
                                     "vmladav.s16 %[d2], %q[vb], q0\n\t"
                                     "vmladav.s16 %[d3], %q[vb], q1\n\t"
                                     "strd %[d0], %[d1], [%[y0]], #8\n\t"
                                     "strd %[d2], %[d3], [%[y1]], #8"
                                     : [d0] "=&Te"(d0), [d1] "=&Te"(d1), [d2] "=&Te"(d2), [d3] "=&Te"(d3),
                                       [t] "+r"(t), [y0] "+r"(y0), [y1] "+r"(y1)
                                     : [va] "w"(va), [vb] "w"(vb)
                                     : "q0", "q1", "memory");
                }
                y0 -= q;
                y1 -= q;
#else
                for (q = 0; q + 2 <= m2; q += 2, t += 16) {
                    const int16x8_t t0 = vldrhq_s16(t);
                    const int16x8_t t1 = vldrhq_s16(t + 8);
                    y0[q] = vmladavq_s16(va, t0);
                    y0[q + 1] = vmladavq_s16(va, t1);
                    y1[q] = vmladavq_s16(vb, t0);
                    y1[q + 1] = vmladavq_s16(vb, t1);
                }
#endif
                if (q < m2) {
                    const int16x8_t t0 = vldrhq_s16(t);
                    y0[q] = vmladavq_s16(va, t0);
                    y1[q] = vmladavq_s16(vb, t0);
                }
            }
        }
        for (; p < m1; p++, ap += n1_p) {
            const int16_t *t = (const int16_t *)tt;
            if (n1_p == 4) {
                const int16x8_t va = vldrbq_z_s16(ap, vctp16q(4));
                const mve_pred16_t lo = vctp16q(4);
                for (q = 0; q < m2; q++, t += 4) {
                    y[q] = vmladavq_s16(va, vldrhq_z_s16(t, lo));
                }
            } else if (n1_p == 8) {
                const int16x8_t va = vldrbq_s16(ap);
                for (q = 0; q < m2; q++, t += 8) {
                    y[q] = vmladavq_s16(va, vldrhq_s16(t));
                }
            } else {
                for (q = 0; q < m2; q++, t += n1_p) {
                    int32_t k, d = 0;
                    for (k = 0; k < n1_p; k += 8) {
                        const mve_pred16_t pr = vctp16q((uint32_t)(n1_p - k));
                        d = vmladavaq_s16(d, vldrbq_z_s16(ap + k, pr), vldrhq_z_s16(t + k, pr));
                    }
                    y[q] = d;
                }
            }
            y += m2;
        }
        return;
    }
    {
        /* Two columns: T^T word q is (T[0][q], T[1][q]). Rows p, p+1 share one A word: SXTB16 and SXTB16 ROR 8
         * give their (A[p][0], A[p][1]) pairs, each in every lane pair; per four outputs VMULLB, VMULLT and one
         * add; the last 1..3 outputs under a VCTP predicate. */
        const int32_t *ap = a;
        for (p = 0; p < m1; p += 2, y += 2 * m2) {
            const int32_t word = *ap++;
            const int16x8_t va = vreinterpretq_s16_s32(vdupq_n_s32(__sxtb16(word)));
            const int16x8_t vb = vreinterpretq_s16_s32(vdupq_n_s32(kp_sxtb16_ror8(word)));
            const int32_t *t = tt;
            int32_t *y0 = y, *y1 = y + m2;
            const int32_t two = p + 1 < m1;
            for (q = m2; q >= 4; q -= 4) {
                const int16x8_t tv = vreinterpretq_s16_s32(vldrwq_s32(t));
                t += 4;
                vstrwq_s32(y0, vaddq_s32(vmullbq_int_s16(tv, va), vmulltq_int_s16(tv, va)));
                y0 += 4;
                if (two) {
                    vstrwq_s32(y1, vaddq_s32(vmullbq_int_s16(tv, vb), vmulltq_int_s16(tv, vb)));
                    y1 += 4;
                }
            }
            if (q > 0) {
                const mve_pred16_t pr = vctp32q((uint32_t)q);
                const int16x8_t tv = vreinterpretq_s16_s32(vldrwq_z_s32(t, pr));
                vstrwq_p_s32(y0, vaddq_s32(vmullbq_int_s16(tv, va), vmulltq_int_s16(tv, va)), pr);
                if (two) {
                    vstrwq_p_s32(y1, vaddq_s32(vmullbq_int_s16(tv, vb), vmulltq_int_s16(tv, vb)), pr);
                }
            }
        }
        (void)row;
        return;
    }
#endif
#if defined(KP_DSP)
    if (n1_p == 2) { /* rows in pairs: one A word holds rows p and p+1 */
        for (p = 0; p < m1; p += 2, y += 2 * m2) {
            const int32_t wa = *a++;
            const int32_t va = __sxtb16(wa);
            const int32_t vb = kp_sxtb16_ror8(wa);
            const int32_t *t = tt;
            int32_t *y0 = y, *y1 = y + m2;
            if (p + 1 >= m1) {
                for (q = 0; q < m2; q++) {
                    y[q] = __smuad(tt[q], va);
                }
                break;
            }
            KP_UNROLL_FIXED
            for (q = m2 >> 1; q != 0; q--) { /* counted: with a constant m2 it unrolls completely */
                int32_t t0, t1;
                t = kp_ld2(t, &t0, &t1);
                y0 = kp_st2(y0, __smuad(t0, va), __smuad(t1, va));
                y1 = kp_st2(y1, __smuad(t0, vb), __smuad(t1, vb));
            }
            if (m2 & 1) {
                *y0 = __smuad(*t, va);
                *y1 = __smuad(*t, vb);
            }
        }
        return;
    }
#if !defined(KP_MVE)
    if (n1_p == 4) {
        const int32_t *const a_end = a + m1;
        const int32_t *const t_end = tt + 2 * m2;
        for (; a != a_end; a++) {
            const int32_t v0 = __sxtb16(*a), v1 = kp_sxtb16_ror8(*a);
            const int32_t *t = tt;
            for (; t != t_end; t += 2) {
                *y++ = __smlad(t[1], v1, __smuad(t[0], v0));
            }
        }
        return;
    }
    if (n1_p == 8) {
        const int32_t *const a_end = a + 2 * m1;
        for (; a != a_end; a += 2) {
            const int32_t wa = a[0], wb = a[1];
            const int32_t v0 = __sxtb16(wa), v1 = kp_sxtb16_ror8(wa), v2 = __sxtb16(wb), v3 = kp_sxtb16_ror8(wb);
            const int32_t *t = tt;
            int32_t j;
            KP_UNROLL_FIXED
            for (j = m2 >> 1; j != 0; j--) { /* T^T rows in pairs, then maybe one; with a constant m2 it unrolls */
                int32_t t0, t1, t2, t3, d;
                t = kp_ld2(t, &t0, &t1);
                t = kp_ld2(t, &t2, &t3);
                d = __smlad(t3, v3, __smlad(t2, v2, __smlad(t1, v1, __smuad(t0, v0))));
                t = kp_ld2(t, &t0, &t1);
                t = kp_ld2(t, &t2, &t3);
                y = kp_st2(y, d, __smlad(t3, v3, __smlad(t2, v2, __smlad(t1, v1, __smuad(t0, v0)))));
            }
            if (m2 & 1) {
                *y++ = __smlad(t[3], v3, __smlad(t[2], v2, __smlad(t[1], v1, __smuad(t[0], v0))));
            }
        }
        return;
    }
#endif /* !KP_MVE */
#endif
    for (p = 0; p < m1; p++, y += m2) {
        const int32_t *t = tt;
        kp_widen_row(a, p, n1_p, row);
        for (q = 0; q < m2; q++, t += words) {
            y[q] = kp_dot_words(t, row, words);
        }
    }
}

#if defined(KP_DSP) && !defined(KP_MVE)
#if defined(KP_ARM_ASM)
/* One row of an int16 chunk of 8 (four words, two LDRD) against the vector words v0..v3: four SMLAD. */
#define KP_ROW16(acc)                                                                                         \
    do {                                                                                                      \
        int32_t w0_, w1_;                                                                                     \
        __asm__("ldrd %[w0], %[w1], [%[wp]], #8\n\t"                                                         \
                "smlad %[a], %[w0], %[v0], %[a]\n\t"                                                          \
                "smlad %[a], %[w1], %[v1], %[a]\n\t"                                                          \
                "ldrd %[w0], %[w1], [%[wp]], #8\n\t"                                                         \
                "smlad %[a], %[w0], %[v2], %[a]\n\t"                                                          \
                "smlad %[a], %[w1], %[v3], %[a]"                                                              \
                : [a] "+r"(acc), [wp] "+r"(wp), [w0] "=&r"(w0_), [w1] "=&r"(w1_)                              \
                : [v0] "r"(v0), [v1] "r"(v1), [v2] "r"(v2), [v3] "r"(v3), "m"(*(const kp_word2_t *)wp),        \
                  "m"(*(const kp_word2_t *)(wp + 2)));                                                        \
    } while (0)
#else
#define KP_ROW16(acc)                                                                                         \
    do {                                                                                                      \
        acc = __smlad(wp[0], v0, acc);                                                                        \
        acc = __smlad(wp[1], v1, acc);                                                                        \
        acc = __smlad(wp[2], v2, acc);                                                                        \
        acc = __smlad(wp[3], v3, acc);                                                                        \
        wp += 4;                                                                                              \
    } while (0)
#endif

/*
 * X B^T with B in int16 pairs (kpgen.codegen.layout.pack_blocks16; cols_p > 2, the DSP path without Helium): the
 * blocks kernel's sums, one SMLAD per weight pair without unpacking, each sum rounded into T^T as in t_mode
 * (t_out[r * t_stride] = sat16(rsr(sum, ts)), ts 0..31). A block is 2 * cols_p words.
 */
KP_INLINE void kp_blocks16_tt(const int32_t *w, int32_t rows, int32_t cols_p, const int32_t *v, kp_half_t *t_out,
                              int32_t t_stride, int32_t ts)
{
    const int32_t init = kp_round_half(ts);
    int32_t blk;
    for (blk = 0; blk < ((rows + 3) >> 2); blk++, t_out += 4 * t_stride) {
        const int32_t *wp = w + blk * 2 * cols_p;
        const int32_t *vp = v;
        int32_t a0 = init, a1 = init, a2 = init, a3 = init;
        uint32_t k;
        KP_UNROLL_FIXED
        for (k = (uint32_t)cols_p >> 3; k != 0; k--) {
            int32_t v0, v1, v2, v3;
            vp = kp_ld2(vp, &v0, &v1);
            vp = kp_ld2(vp, &v2, &v3);
            KP_ROW16(a0);
            KP_ROW16(a1);
            KP_ROW16(a2);
            KP_ROW16(a3);
        }
        if (cols_p & 4) {
            const int32_t v0 = vp[0], v1 = vp[1];
            a0 = __smlad(wp[1], v1, __smlad(wp[0], v0, a0));
            a1 = __smlad(wp[3], v1, __smlad(wp[2], v0, a1));
            a2 = __smlad(wp[5], v1, __smlad(wp[4], v0, a2));
            a3 = __smlad(wp[7], v1, __smlad(wp[6], v0, a3));
        }
        kp_block_store(a0, a1, a2, a3, rows - 4 * blk < 4 ? rows - 4 * blk : 4, (int32_t *)0, 1, t_out, t_stride,
                       ts);
    }
}
#undef KP_ROW16

/* kp_xbt_body with B packed by pack_blocks16 (n2 > 2). */
KP_INLINE void kp_xbt16_body(const int32_t *b, int32_t n1, int32_t m2, int32_t n2, int32_t ts,
                             const int8_t *KP_RESTRICT x, int32_t *KP_RESTRICT tv)
{
    const int32_t n1_p = kp_cols_padded(n1);
    const int32_t n2_p = kp_cols_padded(n2);
    int32_t *const row = tv + m2 * (n1_p >> 1);
    kp_half_t *const tt = (kp_half_t *)tv;
    int32_t i, q;

    for (i = 0; i < n1; i++) {
        kp_widen(x + i * n2, n2, n2_p, 1, 0, row);
        kp_blocks16_tt(b, m2, n2_p, row, tt + kp_tslot(i, n1_p, m2), n1_p, ts);
    }
    for (; i < n1_p; i++) {
        kp_half_t *out = tt + kp_tslot(i, n1_p, m2);
        for (q = 0; q < m2; q++, out += n1_p) {
            *out = 0;
        }
    }
}
#endif

/*
 * A two-factor product (dense mode for B 1x1) whose shapes and shift are compile-time constants at the call
 * site: the emitter's per-matrix kernels (templates/kp_matrix.j2) call it with literals, so every loop bound,
 * stride and branch on the shape folds away and the short loops unroll. b16: B packed by pack_blocks16 (DSP
 * builds without Helium only), else by pack_blocks. Same arithmetic and buffers as kp_matvec2_s8: scratch
 * kron_scratch_words(m1, n1, m2, n2) words; y: m1*m2 int32.
 */
KP_INLINE void kp_kron2_fixed(const int32_t *a, const int32_t *b, int32_t m1, int32_t n1, int32_t m2, int32_t n2,
                              int32_t ts, int32_t b16, const int8_t *x, int32_t *scratch, int32_t *y)
{
    if (m2 == 1 && n2 == 1) {
        kp_widen(x, n1, kp_cols_padded(n1), kp_block_byte(b, 0), ts, scratch);
        kp_at_body(a, m1, n1, 1, scratch, scratch, y);
        return;
    }
#if defined(KP_DSP) && !defined(KP_MVE)
    if (b16) {
        kp_xbt16_body(b, n1, m2, n2, ts, x, scratch);
    } else {
        kp_xbt_body(b, n1, m2, n2, ts, x, scratch);
    }
#else
    (void)b16; /* B in int16 is the DSP layout only (the emitted model.c checks the build) */
    kp_xbt_body(b, n1, m2, n2, ts, x, scratch);
#endif
    kp_at_body(a, m1, n1, m2, scratch, scratch + m2 * (kp_cols_padded(n1) >> 1), y);
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
        kp_dense_x_s16(x, w->n1, kp_block_byte(w->b, 0), w->t_shift, scratch);
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

/*
 * Hybrid KP with its top rows spread (kp_hkp_top_s8.c): y holds the r = top_rows dense rows' results, then the
 * kp_rows Kronecker rows; afterwards y's rows are groups equal blocks, block g = top rows g*t .. g*t + t - 1
 * (t = r / groups) followed by Kronecker rows r + g*(b - t) onwards (b = (r + kp_rows) / groups), as
 * kpgen.ir.hkp_row_order. scratch: r words. Pre: groups divides r and r + kp_rows.
 */
void kp_hkp_spread_s32(int32_t *y, int32_t top_rows, int32_t kp_rows, int32_t groups, int32_t *scratch);

#endif /* KP_MATVEC_INTERNAL_H */
