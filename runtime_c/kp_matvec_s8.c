/*
 * kp_matvec_s8.c - Kronecker-product matrix-vector product (see kp_matvec_s8.h).
 *
 The multiply-accumulates run on factors packed by kpgen.layout:
 *   kp_blocks_dot  an int8 matrix in 4-row blocks times one int16 vector: the dense matrix-vector product,
 *                  and A T when T has one column (m2 == 1). Four accumulators share each vector load.
 *                  Also X B^T: B in blocks against each widened row of X, rounded into T.
 *   kp_dot_words   int16 x int16 dot products: A T for m2 > 1 (a row of A widened once, against the m2 rows
 *                  of T^T).
 * The stages are separate functions so an instruction profile names them:
 *   kp_dense_x_s16   dense mode, step 1: x widened (times b00, rounded) into the int16 vector
 *   kp_kron_xbt_s8   step 1 (Kronecker): X widened, T^T = rsr(B X^T) rounded and saturated into int16
 *   kp_kron_at_s8    step 2: A T, and the dense matrix-vector product
 *   kp_matvec_ext_s8 matrices with more than two factors (kp_kron_deep_s8) or HKP top rows (kp_hkp_top_s8),
 *                    built from the stages above; kp_matvec_s8 reaches it after one NULL check
 */
#include "kp_matvec_s8.h"

#include <string.h>

#include "kp_common.h"

/* Forced inlining specialises the kernels per call site; a size build (-Os) lets the compiler share them. */
#if defined(__GNUC__) && !defined(__OPTIMIZE_SIZE__)
#define KP_INLINE static inline __attribute__((always_inline))
#else
#define KP_INLINE static inline
#endif

/*
 * out (cols_p / 2 words) = the int16 vector a matrix with cols_p padded columns multiplies, in the path's
 * order (kp_vslot): element j = sat16(rsr(x[j] * mul, shift)) for j < n, zero padding after.
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
                op[0] = __sxtb16(xw);            /* (x[4g], x[4g+2]) */
                op[1] = kp_sxtb16_ror8(xw);      /* (x[4g+1], x[4g+3]) */
                op += 2;
            } while (xp != xend);
            k = (n & ~(int32_t)3) >> 1;
        }
#endif
    }
    for (; k < words; k++) {
        const int32_t j0 = kp_vslot(2 * k, cols_p);
        const int32_t j1 = kp_vslot(2 * k + 1, cols_p);
        const int32_t e0 = j0 < n ? kp_sat16(kp_rsr32((int32_t)x[j0] * mul, shift)) : 0;
        const int32_t e1 = j1 < n ? kp_sat16(kp_rsr32((int32_t)x[j1] * mul, shift)) : 0;
        out[k] = kp_pack16(e0, e1);
    }
}

/*
 * Row r of an int8 matrix packed in rows (kpgen.layout.pack_rows), widened to cols_p / 2 words in the rows
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

/* T from an X B^T sum: sat16(rsr(d, ts)), with half = 2^(ts-1) (0 for ts == 0); |d| < 2^30 (kernel_limits). */
KP_INLINE int32_t kp_t_round(int32_t d, int32_t half, int32_t ts)
{
    return kp_ssat16((d + half) >> ts);
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

#if defined(KP_DSP)
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

/*
 * The blocks kernel: y[r] = sum_c W[r][c] * v[c] for r < rows, W (rows x cols int8) packed by
 * kpgen.layout.pack_blocks, v the int16 vector (cols_padded(cols) elements in kp_vslot order). With t_mode
 * (X B^T) the sums are rounded into T instead: t_out[r * t_stride] = sat16(rsr(y[r], ts)).
 * Two-column matrices (all paths): per block, SXTB16 of word 0 is row 0's (c0, c1), rotated row 1's, and
 * word 1 holds rows 2 and 3; one SMUAD per row against the vector word. Otherwise a block is a run of
 * chunks (8 columns, the last maybe 4) with each row's bytes contiguous:
 *   DSP: per row word, SXTB16 gives bytes (0, 2), SXTB16 ROR #8 bytes (1, 3); SMLAD with the vector pairs.
 *   Helium: VLDRB.S16 of a row's 8 bytes, VMLADAVA.S16 against the vector's 8 lanes (predicated 4-col tail).
 * Every path sums the same products exactly in int32, so all give the same bits.
 */
#if defined(KP_MVE)
typedef struct {
    int8_t b[16];
} kp_bytes16_t;
#endif

/* The four sums of one block of a matrix with more than 2 padded columns (see kp_blocks_dot), from init. */
KP_INLINE void kp_block_sums(const int32_t *w, int32_t cols_p, const int32_t *v, int32_t init, int32_t *s)
{
    int32_t a0 = init, a1 = init, a2 = init, a3 = init;
#if defined(KP_MVE)
    const int8_t *wp8 = (const int8_t *)w;
    const int32_t *vp = v;
    int32_t k;
    /*
     * One asm loop (DLS/LE) per block: VLDRW of the vector chunk, then per row VLDRB.S16 with write-back (a
     * low register, l) and VMLADAVA.S16 into an even register (Te). GCC 12 spends two more instructions per chunk on the same
     * intrinsics (register moves around the even-register constraint).
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

/* The four sums of one block of a 2-column matrix (word 0: rows 0 and 1, word 1: rows 2 and 3). */
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

/* Store the first n (1..4) of the sums s0..s3: int32 at y[0..n), or with t_mode rounded into T at
 * t_out[k * t_stride]. Scalars, not an array, so that the sums stay in registers. */
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

KP_INLINE void kp_blocks_dot(const int32_t *w, int32_t rows, int32_t cols, const int32_t *v, int32_t *y,
                             int32_t t_mode, kp_half_t *t_out, int32_t t_stride, int32_t ts)
{
    const int32_t cols_p = kp_cols_padded(cols);
    const int32_t init = t_mode && ts > 0 ? (int32_t)1 << (ts - 1) : 0; /* T's rounding term as the start */
    const int32_t *const w_full = w + (rows >> 2) * cols_p;              /* a block is cols_p words */
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

/* Dense mode, step 1: T = sat16(rsr(x * b00, t_shift)) as the int16 vector A multiplies. */
static KP_STAGE void kp_dense_x_s16(const int8_t *x, int32_t n, int32_t b00, int32_t t_shift, int32_t *tv)
{
    kp_widen(x, n, kp_cols_padded(n), b00, t_shift, tv);
}

/* Where column i of T sits in a row of T^T: the blocks kernel's order for m2 == 1, else the rows kernel's. */
KP_INLINE int32_t kp_tslot(int32_t i, int32_t n1_p, int32_t m2)
{
    return m2 == 1 ? kp_vslot(i, n1_p) : kp_vslot_rows(i, n1_p);
}

/*
 * Step 1: T^T[q][kp_tslot(i)] = sat16(rsr(B[q] . X[i], t_shift)): each row of X widened to int16 once, then
 * the blocks kernel runs B (packed in blocks) against it, rounding each sum into its element of T^T (a column
 * of T^T per row of X). The padding columns of T^T (i >= n1) are zero.
 * Scratch: T^T (m2 rows of n1_p / 2 words), then one widened row of X (or of A, in step 2).
 */
static KP_STAGE KP_HOT void kp_kron_xbt_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *tv)
{
    const int32_t n1 = w->n1;
    const int32_t n2 = w->n2;
    const int32_t m2 = w->m2;
    const int32_t n1_p = kp_cols_padded(n1);
    const int32_t n2_p = kp_cols_padded(n2);
    int32_t *const row = tv + m2 * (n1_p >> 1);
    kp_half_t *const tt = (kp_half_t *)tv;
    int32_t i, q;

    for (i = 0; i < n1; i++) {
        kp_widen(x + i * n2, n2, n2_p, 1, 0, row);
        kp_blocks_dot(w->b, m2, n2, row, row, 1, tt + kp_tslot(i, n1_p, m2), n1_p, w->t_shift);
    }
    for (; i < n1_p; i++) {
        kp_half_t *out = tt + kp_tslot(i, n1_p, m2);
        for (q = 0; q < m2; q++, out += n1_p) {
            *out = 0;
        }
    }
}

/*
 * Step 2: y[p*m2 + q] = A[p] . T[:, q]. With m2 == 1 (and in dense mode) A is in blocks and T one vector:
 * the blocks kernel. Otherwise A is in rows: each row of A, widened once (into registers on the DSP path for
 * up to 8 columns), against the m2 rows of T^T, whose outputs are consecutive.
 */
static KP_STAGE KP_HOT void kp_kron_at_s8(const kp_kron_s8 *w, const int32_t *tt, int32_t *row, int32_t *y)
{
    const int32_t m1 = w->m1;
    const int32_t m2 = w->m2;
    const int32_t n1_p = kp_cols_padded(w->n1);
    const int32_t words = n1_p >> 1;
    const int32_t *a = w->a;
    int32_t p, q;
    if (m2 == 1) {
        kp_blocks_dot(a, m1, w->n1, tt, y, 0, (kp_half_t *)0, 0, 0);
        return;
    }
#if defined(KP_DSP)
    if (n1_p == 2) { /* rows in pairs: one A word holds rows p and p+1 */
        const int32_t *const t_pairs = tt + (m2 & ~(int32_t)1);
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
            while (t != t_pairs) {
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
        const int32_t *const t_pairs = tt + 8 * (m2 >> 1); /* T^T rows come in pairs, then maybe one */
        for (; a != a_end; a += 2) {
            const int32_t wa = a[0], wb = a[1];
            const int32_t v0 = __sxtb16(wa), v1 = kp_sxtb16_ror8(wa), v2 = __sxtb16(wb), v3 = kp_sxtb16_ror8(wb);
            const int32_t *t = tt;
            while (t != t_pairs) {
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
#endif
    for (p = 0; p < m1; p++, y += m2) {
        const int32_t *t = tt;
        kp_widen_row(a, p, n1_p, row);
        for (q = 0; q < m2; q++, t += words) {
            y[q] = kp_dot_words(t, row, words);
        }
    }
}

/* A two-factor product (dense mode for B 1x1): all of kp_matvec_s8 for a matrix without inner or top. */
KP_INLINE void kp_matvec2_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    const int32_t n1_p = kp_cols_padded(w->n1);
    int32_t *tt;
    if (w->m2 == 1 && w->n2 == 1) {
        kp_dense_x_s16(x, w->n1, ((const int8_t *)w->b)[0], w->t_shift, scratch);
        kp_kron_at_s8(w, scratch, scratch, y);
        return;
    }
    tt = scratch;
    kp_kron_xbt_s8(w, x, scratch);
    kp_kron_at_s8(w, tt, tt + w->m2 * (n1_p >> 1), y); /* the row buffer reuses the widened rows of X */
}

#ifndef KP_NO_KRON_EXT
/* Element q of v (q < m) rounded into column i of T^T (m rows of n1_p int16, slots of kp_tslot):
 * sat16(rsr(v[q], ts)) (kp_rsr32 cannot overflow). */
static void kp_round_column(const int32_t *v, int32_t m, int32_t ts, int32_t *tt, int32_t i, int32_t n1_p)
{
    kp_half_t *out = (kp_half_t *)tt + kp_tslot(i, n1_p, m);
    int32_t q;
    for (q = 0; q < m; q++, out += n1_p) {
        *out = kp_sat16(kp_rsr32(v[q], ts));
    }
}

/*
 * More than two factors (w->inner != NULL): the mode-product chain, without recursion. Levels lv[0] = w,
 * lv[l + 1] = lv[l]->inner, the last one a two-factor matrix. For each of the n1 * n2 * ... sub-vectors of x
 * (one per column of every level's T^T) the last level computes its products (kp_matvec2_s8); they are
 * rounded by the shift of the level above into a column of its T^T. A level whose T^T is complete multiplies
 * it by its A (kp_kron_at_s8, as in two-factor step 2), and that result is rounded into the level above in
 * turn; lv[0]'s is y. Multiply-accumulates: those of the mode products, last factor first.
 * Scratch: the T^T of lv[0 .. d-2] (lv[l]->m2 rows of cols_padded(lv[l]->n1) int16 each, padding columns
 * zero), an int32 result of the largest lv[l]->m2, then the work area of the last level (its kron scratch)
 * or of one widened row of an A (kpgen.layout.matrix_scratch_words).
 */
static KP_STAGE void kp_kron_deep_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    const kp_kron_s8 *lv[KP_MAX_FACTORS - 1];
    int32_t *tt[KP_MAX_FACTORS - 1];
    int32_t col[KP_MAX_FACTORS - 1];
    const kp_kron_s8 *last;
    int32_t d = 0, l, s, subs = 1, res_len = 0, step;
    int32_t *res, *work = scratch;

    for (last = w; last != 0 && d < KP_MAX_FACTORS - 1; last = last->inner) {
        lv[d++] = last;
    }
    for (l = 0; l + 1 < d; l++) {
        const int32_t n1_p = kp_cols_padded(lv[l]->n1);
        const int32_t m = lv[l]->m2;
        int32_t q, i;
        tt[l] = work;
        col[l] = 0;
        for (i = lv[l]->n1; i < n1_p; i++) { /* padding columns: zero, never written again */
            kp_half_t *out = (kp_half_t *)work + kp_tslot(i, n1_p, m);
            for (q = 0; q < m; q++, out += n1_p) {
                *out = 0;
            }
        }
        work += m * (n1_p >> 1);
        subs *= lv[l]->n1;
        res_len = m > res_len ? m : res_len;
    }
    res = work;
    work += res_len;
    last = lv[d - 1];
    step = last->n1 * last->n2;
    for (s = 0; s < subs; s++, x += step) {
        kp_matvec2_s8(last, x, work, res);
        for (l = d - 2; l >= 0; l--) {
            const kp_kron_s8 *const v = lv[l];
            kp_round_column(res, v->m2, v->t_shift, tt[l], col[l], kp_cols_padded(v->n1));
            if (++col[l] < v->n1) {
                break;
            }
            col[l] = 0; /* T^T of level l complete: its products, rounded into the level above next */
            kp_kron_at_s8(v, tt[l], work, l == 0 ? y : res);
        }
    }
}

/* Hybrid KP: y[0 .. r) = the top rows (a dense kp_kron_s8) times x, times 2^top_shift or kp_rsr32 by -top_shift. */
static KP_STAGE void kp_hkp_top_s8(const kp_kron_s8 *top, int32_t top_shift, const int8_t *x, int32_t *scratch,
                                   int32_t *y)
{
    const int32_t rows = top->m1;
    int32_t r;
    kp_matvec2_s8(top, x, scratch, y);
    if (top_shift > 0) {
        for (r = 0; r < rows; r++) {
            y[r] = kp_scale_pow2(y[r], top_shift);
        }
    } else if (top_shift < 0) {
        for (r = 0; r < rows; r++) {
            y[r] = kp_rsr32(y[r], -top_shift);
        }
    }
}

/* A matrix with more than two factors or HKP top rows: the top rows, then the Kronecker part below them.
 * A build whose matrices are all plain two-factor (or dense) ones may define KP_NO_KRON_EXT: kp_matvec_s8 then
 * never calls this, the linker drops it and the chains below, and the model's stack bound loses their frames
 * (kpgen's emitted Makefile and CMakeLists.txt define it for such models; their model.c refuses it otherwise). */
static KP_STAGE void kp_matvec_ext_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    if (w->top != 0) {
        kp_hkp_top_s8(w->top, w->top_shift, x, scratch, y);
        y += w->top->m1;
    }
    if (w->inner != 0) {
        kp_kron_deep_s8(w, x, scratch, y);
    } else {
        kp_matvec2_s8(w, x, scratch, y);
    }
}
#endif

void kp_matvec_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
#ifndef KP_NO_KRON_EXT
    if (w->inner != 0 || w->top != 0) {
        kp_matvec_ext_s8(w, x, scratch, y);
        return;
    }
#endif
    kp_matvec2_s8(w, x, scratch, y);
}
