/*
 * kp_activation_s16.c - sigmoid and tanh by table interpolation (see kp_activation_s16.h).
 */
#include "kp_activation_s16.h"

/*
 * Linear interpolation in a 257-entry table over the int16 range: segment k = (z + 32768) >> 8,
 * position r in 0..255, rounding half up. The result lies between tab[k] and tab[k+1], so it fits int16.
 */
static int16_t kp_interp_s16(int16_t z, const int16_t *table)
{
    const int32_t u = (int32_t)z + 32768;
    const int32_t k = u >> 8;
    const int32_t r = u & 255;
    const int32_t t0 = table[k];
    const int32_t t1 = table[k + 1];
    return (int16_t)(t0 + (((t1 - t0) * r + 128) >> 8));
}

int16_t kp_sigmoid_s16(int16_t z, const int16_t *table)
{
    return kp_interp_s16(z, table);
}

int16_t kp_tanh_s16(int16_t z, const int16_t *table)
{
    return kp_interp_s16(z, table);
}
