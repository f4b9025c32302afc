/*
 * kp_activation_s16.h - sigmoid and tanh by table look-up, Q3.12 int16 in, Q0.15 int16 out.
 */
#ifndef KP_ACTIVATION_S16_H
#define KP_ACTIVATION_S16_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KP_ACT_TABLE_SIZE 1024 /* entries per table: one per 64 Q3.12 inputs */
#define KP_ACT_SHIFT 6

/*
 * f(z) = table[(z + 32768) >> 6] (docs/quantization.md, "Activations"); table: 1024 int16 entries from
 * kpgen.reference.golden.make_table. mid = table + 512, so the entry is mid[z >> 6]: one shift and one load.
 */
static inline int32_t kp_act_s16(int32_t z, const int16_t *mid)
{
    return mid[z >> KP_ACT_SHIFT];
}

/* Sigmoid of z (Q3.12, the full int16 range -8..8) as Q0.15; table: the 1024-entry sigmoid table. */
int16_t kp_sigmoid_s16(int16_t z, const int16_t *table);

/* Tanh of z (Q3.12) as Q0.15; table: the 1024-entry tanh table. */
int16_t kp_tanh_s16(int16_t z, const int16_t *table);

#ifdef __cplusplus
}
#endif

#endif /* KP_ACTIVATION_S16_H */
