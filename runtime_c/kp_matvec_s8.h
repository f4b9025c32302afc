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
 * W = A (x) B with A: m1 x n1 and B: m2 x n2, both int8, packed into int32 words by kpgen.codegen.layout.pack_kron:
 * B in 4-row blocks, A in blocks when m2 == 1 and row by row otherwise (docs/quantization.md, "Weight layout").
 * A dense matrix is the case B = [[b00]] (1x1): then only byte 0 of b is read. t_shift: the rounding shift
 * of the intermediate T (docs/quantization.md).
 * More factors (W = A (x) B (x) C ...): inner is the matrix B (x) C ... (m2 x n2, itself a kp_kron_s8 with
 * its own shift, and so on, at most KP_MAX_FACTORS factors in all) and b is unused; NULL: two factors.
 * Hybrid KP: top is a dense kp_kron_s8 (B = [[1]], t_shift 0) of r rows above the Kronecker part, whose
 * products are scaled by 2^top_shift (a left shift for top_shift >= 0, kp_rsr32 by -top_shift otherwise,
 * -31..31); NULL: none. top_groups G > 1: y's rows are G equal blocks, each r / G of the top rows followed by
 * its share of the Kronecker part's rows (kpgen.ir.hkp_row_order: a gated cell's gates each get dense rows).
 * Nested matrices (inner and top) have top NULL and top_groups 1; the emitter initialises every member.
 * fixed: the number of a kernel the emitter specialised to this matrix's shapes (kp_kron2_fixed with constant
 * bounds, templates/kp_matrix.j2); a runtime built with KP_FIXED_KERNELS runs it through kp_matvec_fixed_s8, which
 * the emitted model.c defines (a direct call: the stack bound stays static); it gives the same bits. 0: none.
 */
typedef struct kp_kron_s8_ {
    const int32_t *a;
    const int32_t *b;
    int32_t m1, n1, m2, n2;
    int32_t t_shift;
    const struct kp_kron_s8_ *inner; /* more than two factors: B (x) C ... replaces b (NULL: two factors) */
    const struct kp_kron_s8_ *top;   /* hybrid KP: dense rows above the Kronecker part (NULL: none) */
    int32_t top_shift;               /* the top rows' scaling into the Kronecker part's unit, -31..31 */
    int32_t fixed; /* 1..: the emitted model's kernel for this matrix's shapes (kp_matvec_fixed_s8); 0: none */
    int32_t top_groups; /* hybrid KP: the top rows spread over this many row blocks (1: all on top) */
} kp_kron_s8;

/* Kronecker factors of one matrix that kp_matvec_s8 chains (kpgen.quant.limits.MAX_FACTORS). */
#define KP_MAX_FACTORS 8

/*
 * y = (A (x) B) x without forming the Kronecker product (docs/quantization.md, kp_matvec_s8):
 * 1. T[i][q] = sat16(rsr(sum_j X[i][j] * B[q][j], t_shift))   (X[i][j] = x[i*n2 + j]; int32 sum)
 * 2. y[p*m2 + q] = sum_i A[p][i] * T[i][q]                     (int32 sum; n1 <= 511 keeps it in range)
 * rsr rounds half up; t_shift 0 means no rounding (T = sat16 of the sum). With B 1x1 (dense mode) step 1 is
 * T[i] = sat16(rsr(x[i] * b00, t_shift)) and step 2 one int8 x int16 matrix-vector product.
 * More factors (inner): the rows of X go through the inner matrix the same way, y = vec(A T) with
 * T[i] = sat16(rsr(inner(X[i]), t_shift)) (kpgen.reference.golden.kp_matrix_s8); hybrid KP: y[0..r) = the top rows'
 * products scaled by 2^top_shift, then the Kronecker part from y[r] (top_groups > 1: then spread into G blocks).
 * Shapes: m1, n1, m2, n2 >= 1, n1 <= 511, n2 <= 65535; t_shift 0..31 (dense mode: any).
 * Buffers: x: n1*n2 int8; y: top rows plus m1*m2 int32; scratch: kp_matvec_s8_get_buffer_size(w) int32
 * words (= kpgen.codegen.layout.matrix_scratch_words), contents private. x must not alias the scratch or y.
 * Pre: the matrix satisfies kpgen.quant.limits.kernel_limits (the quantizer guarantees it), so every sum fits int32.
 * Post: y holds the exact result of kpgen.reference.golden.kp_matrix_s8, on every code path.
 */
void kp_matvec_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y);

/*
 * The emitted model's shape-specialised kernels (defined in its model.c, not in the runtime): runs kernel number
 * w->fixed (>= 1) on x, exactly as kp_matvec_s8 would. Called by kp_matvec_s8 in builds with KP_FIXED_KERNELS.
 * A library (kpgen emit --target lib) is built with every runtime function renamed <name>_kp_... (this one
 * included: kpgen.codegen.emit.library_renames), so models emitted with different names link together.
 */
void kp_matvec_fixed_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y);

/*
 * int32 words of scratch kp_matvec_s8(w, ...) needs, the same number as kpgen.codegen.layout.matrix_scratch_words:
 * two factors (m2 x n2 B): (m2 * cols_padded(n1) + max(cols_padded(n1), cols_padded(n2))) / 2, dense
 * cols_padded(n1) / 2; more factors: every outer level's T^T, an int32 result of the largest such m2 and the
 * larger of the last level's scratch and one widened row of an outer A; HKP top rows: at least their dense
 * scratch, and at least r words when top_groups > 1. cols_padded(n) = 2 for n <= 2, else n rounded up to a multiple of 4.
 */
int32_t kp_matvec_s8_get_buffer_size(const kp_kron_s8 *w);

#ifdef __cplusplus
}
#endif

#endif /* KP_MATVEC_S8_H */
