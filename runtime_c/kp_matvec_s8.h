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
 * More factors (W = A (x) B (x) C ...): inner is the matrix B (x) C ... (m2 x n2, itself a kp_kron_s8 with
 * its own shift, and so on, at most KP_MAX_FACTORS factors in all) and b is unused; NULL: two factors.
 * Hybrid KP: top is a dense kp_kron_s8 (B = [[1]], t_shift 0) of r rows above the Kronecker part, whose
 * products are scaled by 2^top_shift (a left shift for top_shift >= 0, kp_rsr32 by -top_shift otherwise,
 * -31..31); NULL: none. Nested matrices (inner and top) have top NULL; the emitter initialises every member.
 */
typedef struct kp_kron_s8_ {
    const int32_t *a;
    const int32_t *b;
    int32_t m1, n1, m2, n2;
    int32_t t_shift;
    const struct kp_kron_s8_ *inner; /* more than two factors: B (x) C ... replaces b (NULL: two factors) */
    const struct kp_kron_s8_ *top;   /* hybrid KP: dense rows above the Kronecker part (NULL: none) */
    int32_t top_shift;               /* the top rows' scaling into the Kronecker part's unit, -31..31 */
} kp_kron_s8;

/* Kronecker factors of one matrix that kp_matvec_s8 chains (kpgen.golden.MAX_FACTORS). */
#define KP_MAX_FACTORS 8

/*
 * y = (A (x) B) x without forming the Kronecker product (docs/quantization.md, kp_matvec_s8):
 * 1. T[i][q] = sat16(rsr(sum_j X[i][j] * B[q][j], t_shift))   (X[i][j] = x[i*n2 + j]; int32 sum)
 * 2. y[p*m2 + q] = sum_i A[p][i] * T[i][q]                     (int32 sum; n1 <= 511 keeps it in range)
 * With B 1x1 (dense mode) step 1 is T[i] = sat16(rsr(x[i] * b00, t_shift)) and step 2 one int8 x int16
 * matrix-vector product. x: n1*n2 int8; y: m1*m2 int32; n2 <= 65535.
 * More factors (inner): the rows of X go through the inner matrix the same way, y = vec(A T) with
 * T[i] = sat16(rsr(inner(X[i]), t_shift)) (kpgen.golden.kp_matrix_s8); hybrid KP: y[0..r) = the top rows'
 * products scaled by 2^top_shift, then the Kronecker part from y[r]. y: top rows plus m1*m2 int32.
 * scratch: kpgen.layout.matrix_scratch_words (for two factors without top rows also kron_scratch_words(m1,
 * n1, m2, n2)) int32 words, contents private. x must not alias the scratch or y.
 */
void kp_matvec_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y);

#ifdef __cplusplus
}
#endif

#endif /* KP_MATVEC_S8_H */
