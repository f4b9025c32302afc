/*
 * kp_common.h - integer helpers shared by the kpgen int8 kernels.
 *
 * The arithmetic follows docs/quantization.md; kpgen/golden.py is the reference. Right shifts of
 * negative values are arithmetic (GCC defines them so).
 */
#ifndef KP_COMMON_H
#define KP_COMMON_H

#include <stdint.h>

/*
 * Round-shift-right: (v + 2^(s-1)) >> s for s in 1..31 (round half up), v for s == 0.
 * Computed as (v >> s) + bit (s-1) of v, which is the same number and cannot overflow.
 */
static inline int32_t kp_rsr32(int32_t v, int32_t s)
{
    if (s <= 0) {
        return v;
    }
    return (v >> s) + ((v >> (s - 1)) & 1);
}

/* Clamp to -128..127. */
static inline int8_t kp_sat8(int32_t v)
{
    return (int8_t)(v < INT8_MIN ? INT8_MIN : (v > INT8_MAX ? INT8_MAX : v));
}

/* Clamp to -32768..32767. */
static inline int16_t kp_sat16(int32_t v)
{
    return (int16_t)(v < INT16_MIN ? INT16_MIN : (v > INT16_MAX ? INT16_MAX : v));
}

/* Clamp a 64-bit value to the int32 range. */
static inline int32_t kp_sat32(int64_t v)
{
    return (int32_t)(v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v));
}

/*
 * Requantize an int32 accumulator by the real multiplier mult / 2^shift:
 * sat32((acc * mult + 2^(shift-1)) >> shift) in int64.
 * mult in [2^30, 2^31), shift in 1..62, so |acc * mult| < 2^62 and the rounding term cannot overflow.
 */
static inline int32_t kp_requantize(int32_t acc, int32_t mult, int32_t shift)
{
    const int64_t prod = (int64_t)acc * (int64_t)mult;
    const int64_t half = (int64_t)1 << (shift - 1);
    return kp_sat32((prod + half) >> shift);
}

#if defined(__ARM_FEATURE_DSP)
/*
 * Rotate right by 8 bits (one ROR). Stands in for ACLE's __ror, which GCC 12's <arm_acle.h> lacks.
 * GCC 12 does not fold it into SXTB16's rotate operand, so __sxtb16(kp_ror8(w)) is ROR + SXTB16.
 */
static inline int32_t kp_ror8(int32_t w)
{
    const uint32_t u = (uint32_t)w;
    return (int32_t)((u >> 8) | (u << 24));
}
#endif

#endif /* KP_COMMON_H */
