/*
 * kp_matvec_s8.h - Kronecker-product matrix-vector product, int8 factors and input, int32 output.
 */
#ifndef KP_MATVEC_S8_H
#define KP_MATVEC_S8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * y = (A (x) B) x without forming the Kronecker product (docs/quantization.md, kp_matvec_s8).
 *
 * a: m1 x n1 int8 row-major; b: m2 x n2 int8 row-major; x: n1*n2 int8 (X[i][j] = x[i*n2 + j]).
 * 1. T[i][q] = sat16(rsr(sum_j X[i][j] * B[q][j], t_shift))   (int32 sum, round half up, t_shift >= 0)
 * 2. y[p*m2 + q] = sum_i A[p][i] * T[i][q]                     (int32 sum; n1 <= 511 keeps it in range)
 * t_scratch: n1*m2 int16 holding T in a layout private to this function. y: m1*m2 int32.
 * All dimensions >= 1.
 */
void kp_matvec_s8(const int8_t *a, int32_t m1, int32_t n1, const int8_t *b, int32_t m2, int32_t n2,
                  const int8_t *x, int32_t t_shift, int16_t *t_scratch, int32_t *y);

#ifdef __cplusplus
}
#endif

#endif /* KP_MATVEC_S8_H */
