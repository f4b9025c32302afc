/*
 * kp_kron_xbt_s8.c - step 1 of a two-factor kp_matvec_s8: T^T = sat16(rsr(B X^T)) (see kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

/* The loop is kp_xbt_body's (kp_matvec_internal.h). The int16 stores into T^T do not touch *w or x (KP_RESTRICT
 * says so), so w->b and w->t_shift can stay in registers across the rows of X. */
KP_STAGE void kp_kron_xbt_s8(const kp_kron_s8 *KP_RESTRICT w, const int8_t *KP_RESTRICT x, int32_t *KP_RESTRICT tv)
{
    kp_xbt_body(w->b, w->n1, w->m2, w->n2, w->t_shift, x, tv);
}
