/*
 * kp_kron_at_s8.c - step 2 of kp_matvec_s8: y = A T, and the dense matrix-vector product (see
 * kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

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
 * Step 2: y[p*m2 + q] = A[p] . T[:, q]. With m2 == 1 (and in dense mode) A is in blocks and T one vector:
 * the blocks kernel. Otherwise A is in rows: each row of A, widened once (into registers on the DSP path for
 * up to 8 columns), against the m2 rows of T^T, whose outputs are consecutive.
 */
KP_STAGE void kp_kron_at_s8(const kp_kron_s8 *w, const int32_t *tt, int32_t *row, int32_t *y)
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
