/*
 * kp_kron_xbt_s8.c - step 1 of a two-factor kp_matvec_s8: T^T = sat16(rsr(B X^T)) (see kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

/*
 * Each row of X widened to int16 once, then the blocks kernel runs B (packed in blocks) against it, rounding
 * each sum into its element of T^T (a column of T^T per row of X). The padding columns of T^T (i >= n1) are
 * zero. Scratch: T^T (m2 rows of n1_p / 2 words), then one widened row of X. The int16 stores into T^T do not
 * touch *w or x (KP_RESTRICT says so), so w->b and w->t_shift can stay in registers across the rows of X.
 */
KP_STAGE void kp_kron_xbt_s8(const kp_kron_s8 *KP_RESTRICT w, const int8_t *KP_RESTRICT x, int32_t *KP_RESTRICT tv)
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
