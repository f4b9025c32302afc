/*
 * kp_activation_s16.h - sigmoid and tanh by table interpolation, Q3.12 int16 in, Q0.15 int16 out.
 */
#ifndef KP_ACTIVATION_S16_H
#define KP_ACTIVATION_S16_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Sigmoid of z (Q3.12, the full int16 range -8..8) as Q0.15. table: the 257-entry sigmoid table
 * (tab[k] = f((256k - 32768) / 4096) in Q0.15, from kpgen.golden.make_table).
 * u = z + 32768, k = u >> 8, r = u & 255: out = tab[k] + (((tab[k+1] - tab[k]) * r + 128) >> 8).
 */
int16_t kp_sigmoid_s16(int16_t z, const int16_t *table);

/* Tanh of z (Q3.12) as Q0.15; the same interpolation on the 257-entry tanh table. */
int16_t kp_tanh_s16(int16_t z, const int16_t *table);

#ifdef __cplusplus
}
#endif

#endif /* KP_ACTIVATION_S16_H */
