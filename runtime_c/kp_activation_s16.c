/*
 * kp_activation_s16.c - sigmoid and tanh by table look-up (see kp_activation_s16.h), and the runtime's gate-bias
 * width marker (kp_common.h, KP_BIAS_RUNTIME): this file is linked into every model.
 */
#include "kp_activation_s16.h"

int16_t kp_sigmoid_s16(int16_t z, const int16_t *table)
{
    return (int16_t)kp_act_s16(z, table + KP_ACT_TABLE_SIZE / 2);
}

int16_t kp_tanh_s16(int16_t z, const int16_t *table)
{
    return (int16_t)kp_act_s16(z, table + KP_ACT_TABLE_SIZE / 2);
}

/* The one marker of the gate-bias width this runtime was built for; an emitted model.c calls the one of its own. */
int32_t KP_BIAS_RUNTIME(void)
{
    return (int32_t)(8 * sizeof(kp_bias_t));
}
