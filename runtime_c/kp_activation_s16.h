/*
 * kp_activation_s16.h - sigmoid and tanh by table look-up, Q3.12 int16 in, Q0.15 int16 out.
 */
#ifndef KP_ACTIVATION_S16_H
#define KP_ACTIVATION_S16_H

#include <stdint.h>
#include <string.h>

#include "kp_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Two table variants (kpgen.reference.golden.make_table; `kpgen emit --act-table` puts the define in the
 * build). Every caller passes mid = table + KP_ACT_TABLE_SIZE / 2, the entry (or knot) of z = 0.
 *   default                 1024 entries, one per 64 Q3.12 inputs: f(z) = mid[z >> 6] (one shift, one load)
 *   KP_ACT_INTERP_SHIFT=s   2^(16-s) + 1 knots, one every 2^s inputs (s = 8: 257 knots, s = 9: 129), and linear
 *                           interpolation: with i = z >> s, f = z & (2^s - 1) (the same f as (z + 32768)'s),
 *                           f(z) = (mid[i] (2^s - f) + mid[i + 1] f + 2^(s-1)) >> s, between the two knots.
 */
#if defined(KP_ACT_INTERP_SHIFT)
#if KP_ACT_INTERP_SHIFT < 4 || KP_ACT_INTERP_SHIFT > 14
#error "KP_ACT_INTERP_SHIFT must be 4..14 (kpgen emits 8 or 9)"
#endif
#define KP_ACT_SHIFT KP_ACT_INTERP_SHIFT
#define KP_ACT_TABLE_SIZE ((65536 >> KP_ACT_INTERP_SHIFT) + 1) /* knots per table */
#else
#define KP_ACT_TABLE_SIZE 1024 /* entries per table: one per 64 Q3.12 inputs */
#define KP_ACT_SHIFT 6
#endif

#if defined(KP_ACT_INTERP_SHIFT)
/*
 * Knots a = mid[i], b = mid[i + 1]; the result lies between them, so it is an int16. Portable: a + ((b - a) f +
 * 2^(s-1)) >> s (a 2^s is a multiple of 2^s, so this is the same floor). DSP: the two knots in one (unaligned)
 * word and SMLAD with the weight pair (2^s - f, f) = f * 0xFFFF + 2^s: |a|, |b| <= 2^15 and the weights sum
 * to 2^s, so nothing overflows. Unaligned LDR is architectural on Armv7E-M and Armv8-M Mainline (CCR.UNALIGN_TRP
 * clear, the reset value).
 */
static inline int32_t kp_act_s16(int32_t z, const int16_t *mid)
{
    const int32_t f = z & (((int32_t)1 << KP_ACT_SHIFT) - 1);
    const int16_t *const p = mid + (z >> KP_ACT_SHIFT);
#if defined(KP_DSP)
    int32_t w;
    memcpy(&w, p, sizeof w);
    return __smlad(w, f * 0xFFFF + ((int32_t)1 << KP_ACT_SHIFT), (int32_t)1 << (KP_ACT_SHIFT - 1)) >> KP_ACT_SHIFT;
#else
    const int32_t a = p[0];
    return a + (((p[1] - a) * f + ((int32_t)1 << (KP_ACT_SHIFT - 1))) >> KP_ACT_SHIFT);
#endif
}
#else
/* f(z) = table[(z + 32768) >> 6] (docs/quantization.md, "Activations") = mid[z >> 6]: one shift and one load. */
static inline int32_t kp_act_s16(int32_t z, const int16_t *mid)
{
    return mid[z >> KP_ACT_SHIFT];
}
#endif

/*
 * f(sat16(z)) for any int32 z: the look-up of a gate sum, its saturation included. The 1024-entry table reads
 * entry sat16(z) >> 6 = sat10(z >> 6) (both clamp to -512..511 exactly when z leaves the int16 range), one SSAT
 * with a shifted operand on the DSP cores; the interpolated tables need sat16(z) itself (its low bits weigh
 * the knots).
 */
static inline int32_t kp_act_sat_s16(int32_t z, const int16_t *mid)
{
#if defined(KP_ACT_INTERP_SHIFT)
    return kp_act_s16(kp_ssat16(z), mid);
#elif defined(KP_DSP) && defined(__GNUC__) && (defined(__arm__) || defined(__thumb__))
    return mid[__builtin_arm_ssat(z >> KP_ACT_SHIFT, 16 - KP_ACT_SHIFT)];
#else
    const int32_t i = z >> KP_ACT_SHIFT;
    return mid[i < -512 ? -512 : (i > 511 ? 511 : i)];
#endif
}

/* Sigmoid of z (Q3.12, the full int16 range -8..8) as Q0.15; table: the KP_ACT_TABLE_SIZE-entry sigmoid table. */
int16_t kp_sigmoid_s16(int16_t z, const int16_t *table);

/* Tanh of z (Q3.12) as Q0.15; table: the KP_ACT_TABLE_SIZE-entry tanh table. */
int16_t kp_tanh_s16(int16_t z, const int16_t *table);

#ifdef __cplusplus
}
#endif

#endif /* KP_ACTIVATION_S16_H */
