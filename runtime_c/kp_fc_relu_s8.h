/*
 * kp_fc_relu_s8.h - fully connected layer with ReLU and requantization to int8: an MLP head's hidden layer.
 */
#ifndef KP_FC_RELU_S8_H
#define KP_FC_RELU_S8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * out[k] = min((max(acc, 0) * mult + 2^(shift-1)) >> shift, 127) with acc = bias[k] + sum_j w[k*cols + j] * x[j]
 * (int32, as kp_fc_s8), for k < rows; the product is int64 (mult < 2^31, 1 <= shift <= 62), so nothing
 * overflows. w: rows x cols int8 row-major; bias: rows int32; x: cols int8; out: rows int8 in 0..127.
 */
void kp_fc_relu_s8(const int8_t *w, const int32_t *bias, int32_t rows, int32_t cols, const int8_t *x, int32_t mult,
                   int32_t shift, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* KP_FC_RELU_S8_H */
