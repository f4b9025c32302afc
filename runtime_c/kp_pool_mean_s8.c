/*
 * kp_pool_mean_s8.c - the mean over time from the int32 sums (see kp_pool_s8.h).
 */
#include "kp_pool_s8.h"

/*
 * C division truncates towards zero; the floor is one less when the remainder is non-zero and the numerator
 * negative (the denominator is positive).
 */
void kp_pool_mean_s8(const int32_t *sum, int32_t n, int32_t count, int8_t *out)
{
    int32_t j;
    for (j = 0; j < n; j++) {
        int32_t q = 0;
        if (count >= 1) {
            const int32_t num = 2 * sum[j] + count;
            const int32_t den = 2 * count;
            q = num / den;
            if (num % den != 0 && num < 0) {
                q -= 1;
            }
        }
        out[j] = (int8_t)q;
    }
}
