/*
 * kp_kron_at_s8.c - step 2 of kp_matvec_s8: y = A T, and the dense matrix-vector product (see
 * kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

/* The loops are kp_at_body's (kp_matvec_internal.h), shared with the shape-specialised kernels (kp_kron2_fixed). */
KP_STAGE void kp_kron_at_s8(const kp_kron_s8 *w, const int32_t *tt, int32_t *row, int32_t *y)
{
    kp_at_body(w->a, w->m1, w->n1, w->m2, tt, row, y);
}
