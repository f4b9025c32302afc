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
 * W = A (x) B with A: m1 x n1 and B: m2 x n2, both int8, packed into int32 words by kpgen.layout.pack_kron:
 * B in 4-row blocks, A in blocks when m2 == 1 and row by row otherwise (docs/quantization.md, "Weight layout").
 * A dense matrix is the case B = [[b00]] (1x1): then only byte 0 of b is read. t_shift: the rounding shift
 * of the intermediate T (docs/quantization.md).
 */
typedef struct {
    const int32_t *a;
    const int32_t *b;
    int32_t m1, n1, m2, n2;
    int32_t t_shift;
} kp_kron_s8;

/*
 * y = (A (x) B) x without forming the Kronecker product (docs/quantization.md, kp_matvec_s8):
 * 1. T[i][q] = sat16(rsr(sum_j X[i][j] * B[q][j], t_shift))   (X[i][j] = x[i*n2 + j]; int32 sum)
 * 2. y[p*m2 + q] = sum_i A[p][i] * T[i][q]                     (int32 sum; n1 <= 511 keeps it in range)
 * With B 1x1 (dense mode) step 1 is T[i] = sat16(rsr(x[i] * b00, t_shift)) and step 2 one int8 x int16
 * matrix-vector product. x: n1*n2 int8; y: m1*m2 int32; n2 <= 65535.
 * scratch: kpgen.layout.kron_scratch_words(m1, n1, m2, n2) int32 words, contents private. x must not alias
 * the scratch or y.
 */
void kp_matvec_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y);

#ifdef __cplusplus
}
#endif

#endif /* KP_MATVEC_S8_H */
