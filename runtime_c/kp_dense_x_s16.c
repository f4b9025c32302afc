/*
 * kp_dense_x_s16.c - dense mode, step 1 of kp_matvec_s8: the input widened to int16 (see kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

/* Kept out of line (KP_STAGE) so that a profile names it; the loop is kp_widen's. */
KP_STAGE void kp_dense_x_s16(const int8_t *x, int32_t n, int32_t b00, int32_t t_shift, int32_t *tv)
{
    kp_widen(x, n, kp_cols_padded(n), b00, t_shift, tv);
}
