/*
 * kp_pool_s8.h - pooling over time of int8 layer outputs, for heads that read the mean or the max of every step.
 */
#ifndef KP_POOL_S8_H
#define KP_POOL_S8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Steps kp_pool_mean_s8 averages at most: |sum| <= 128 * KP_POOL_MAX_STEPS keeps 2 * sum + count in int32. */
#define KP_POOL_MAX_STEPS (1L << 22)

/*
 * sum[j] += h[j] for j < n: the running int32 sum of one step's int8 outputs (no saturation: callers add at
 * most KP_POOL_MAX_STEPS steps, so |sum| <= 2^29).
 */
void kp_pool_sum_s8(const int8_t *h, int32_t n, int32_t *sum);

/*
 * acc[j] = max(acc[j], h[j]) for j < n: the running maximum of int8 outputs (start from -128).
 */
void kp_pool_max_s8(const int8_t *h, int32_t n, int8_t *acc);

/*
 * out[j] = round(sum[j] / count), halves rounded up: floor((2 * sum[j] + count) / (2 * count)), for
 * 1 <= count <= KP_POOL_MAX_STEPS; the mean of int8 values is an int8 value. count < 1 (nothing summed) gives
 * zeros. One integer division per value (a library call on cores without a divide instruction).
 */
void kp_pool_mean_s8(const int32_t *sum, int32_t n, int32_t count, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* KP_POOL_S8_H */
