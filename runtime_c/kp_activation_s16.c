/*
 * kp_activation_s16.c - sigmoid and tanh by table look-up (see kp_activation_s16.h).
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
