/*
 * kp_pool_max_s8.c - running maximum of int8 outputs over time (see kp_pool_s8.h).
 */
#include "kp_pool_s8.h"

void kp_pool_max_s8(const int8_t *h, int32_t n, int8_t *acc)
{
    int32_t j;
    for (j = 0; j < n; j++) {
        if (h[j] > acc[j]) {
            acc[j] = h[j];
        }
    }
}
