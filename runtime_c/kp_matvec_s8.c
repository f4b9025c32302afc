/*
 * kp_matvec_s8.c - Kronecker-product matrix-vector product (see kp_matvec_s8.h).
 */
#include "kp_matvec_s8.h"

#include "kp_common.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#include <string.h>
#endif

#if defined(__ARM_FEATURE_DSP)
/*
 * Slot of T[i] inside one row of the scratch. Full groups of four are stored as (0, 2, 1, 3) so that one
 * 32-bit load gives the int16 pair (T[i], T[i+2]) and the next (T[i+1], T[i+3]): the same pairing as
 * SXTB16 of four int8 weights (bytes 0, 2) and of the same word rotated by 8 (bytes 1, 3).
 * The tail (i >= n1 rounded down to 4) is stored in order.
 */
static inline int32_t kp_t_slot(int32_t i, int32_t n1_4)
{
    if (i >= n1_4) {
        return i;
    }
    switch (i & 3) {
    case 1:
        return i + 1;
    case 2:
        return i - 1;
    default:
        return i;
    }
}
#endif

/*
 * T is kept transposed: t_scratch[q*n1 + slot(i)] = T[i][q], so the second product walks A's row p
 * and T's column q contiguously.
 *
 * Portable path: plain int32 multiply-accumulate.
 * DSP path (__ARM_FEATURE_DSP, e.g. Cortex-M4/M7/M33): four int8 at a time, read with memcpy (no
 * unaligned pointer casts); SXTB16 (after ROR #8 for the odd bytes) widens int8 pairs to int16 pairs and
 * SMLAD does two 16 x 16 multiply-accumulates. Step 1 is int8 x int8 on both sides; step 2 pairs the
 * widened A bytes with int16 pairs of T loaded directly (see kp_t_slot). Odd tails run the portable
 * loop. Every sum is an exact int32 sum of the same products, so both paths give the same bits.
 */
void kp_matvec_s8(const int8_t *a, int32_t m1, int32_t n1, const int8_t *b, int32_t m2, int32_t n2,
                  const int8_t *x, int32_t t_shift, int16_t *t_scratch, int32_t *y)
{
    int32_t i, j, p, q;
#if defined(__ARM_FEATURE_DSP)
    const int32_t n1_4 = n1 & ~(int32_t)3;
#endif

    /* 1. T = X B^T, rounded into int16. */
    for (i = 0; i < n1; i++) {
        const int8_t *xi = x + i * n2;
#if defined(__ARM_FEATURE_DSP)
        const int32_t slot = kp_t_slot(i, n1_4);
#else
        const int32_t slot = i;
#endif
        for (q = 0; q < m2; q++) {
            const int8_t *bq = b + q * n2;
            int32_t sum = 0;
            j = 0;
#if defined(__ARM_FEATURE_DSP)
            for (; j + 4 <= n2; j += 4) {
                int32_t xw, bw;
                memcpy(&xw, xi + j, 4);
                memcpy(&bw, bq + j, 4);
                sum = __smlad(__sxtb16(xw), __sxtb16(bw), sum);
                sum = __smlad(__sxtb16(kp_ror8(xw)), __sxtb16(kp_ror8(bw)), sum);
            }
#endif
            for (; j < n2; j++) {
                sum += (int32_t)xi[j] * (int32_t)bq[j];
            }
            t_scratch[q * n1 + slot] = kp_sat16(kp_rsr32(sum, t_shift));
        }
    }

    /* 2. Y = A T, read out row-major. */
    for (p = 0; p < m1; p++) {
        const int8_t *ap = a + p * n1;
        for (q = 0; q < m2; q++) {
            const int16_t *tq = t_scratch + q * n1;
            int32_t sum = 0;
            i = 0;
#if defined(__ARM_FEATURE_DSP)
            for (; i < n1_4; i += 4) {
                int32_t aw, t02, t13;
                memcpy(&aw, ap + i, 4);
                memcpy(&t02, tq + i, 4);     /* T[i], T[i+2] */
                memcpy(&t13, tq + i + 2, 4); /* T[i+1], T[i+3] */
                sum = __smlad(__sxtb16(aw), t02, sum);
                sum = __smlad(__sxtb16(kp_ror8(aw)), t13, sum);
            }
#endif
            for (; i < n1; i++) {
                sum += (int32_t)ap[i] * (int32_t)tq[i];
            }
            y[p * m2 + q] = sum;
        }
    }
}
