/*
 * kp_pool_sum_s8.c - running int32 sum of int8 outputs over time (see kp_pool_s8.h).
 */
#include "kp_pool_s8.h"

void kp_pool_sum_s8(const int8_t *h, int32_t n, int32_t *sum)
{
    int32_t j;
    for (j = 0; j < n; j++) {
        sum[j] += (int32_t)h[j];
    }
}
