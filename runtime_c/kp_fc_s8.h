/*
 * kp_fc_s8.h - fully connected layer, int8 weights and input, int32 bias and output.
 */
#ifndef KP_FC_S8_H
#define KP_FC_S8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * out[k] = bias[k] + sum_j w[k*cols + j] * x[j] for k < rows, in int32 (no rounding, no saturation).
 * w: rows x cols int8 row-major; bias: rows int32; x: cols int8; out: rows int32.
 */
void kp_fc_s8(const int8_t *w, const int32_t *bias, int32_t rows, int32_t cols, const int8_t *x, int32_t *out);

#ifdef __cplusplus
}
#endif

#endif /* KP_FC_S8_H */
