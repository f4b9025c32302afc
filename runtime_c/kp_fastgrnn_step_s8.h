/*
 * kp_fastgrnn_step_s8.h - one time step of a FastGRNN layer (Kusupati et al. 2018) whose matrices are
 * Kronecker products of int8 factors.
 */
#ifndef KP_FASTGRNN_STEP_S8_H
#define KP_FASTGRNN_STEP_S8_H

#include <stdint.h>

#include "kp_lstm_step_s8.h"
#include "kp_matvec_s8.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A FastGRNN layer; all arrays are const (flash). */
typedef struct {
    int32_t input_size, hidden_size;
    kp_kron_s8 wx;                     /* H x I, packed */
    kp_kron_s8 wh;                     /* H x H, packed */
    int32_t mult_x, shift_x;           /* requantizers to Q3.12: mult 1..2^31-1, shift 1..32 */
    int32_t mult_h, shift_h;
    const kp_bias_t *bias_z;           /* H, Q3.12 */
    const kp_bias_t *bias_h;           /* H, Q3.12 */
    int32_t zeta, nu;                  /* Q0.15, 0..32767 */
    int32_t state_exp;                 /* e, 0..7: h is Q(e).(7-e), one step 2^(e-7) */
    const int16_t *sigmoid_table;      /* KP_ACT_TABLE_SIZE entries each (golden.make_table) */
    const int16_t *tanh_table;
} kp_fastgrnn_params_s8;

/*
 * One FastGRNN step (docs/quantization.md, "FastGRNN step"):
 *   pre = gx + gh; z = sigmoid(sat16(pre + bias_z)), h~ = tanh(sat16(pre + bias_h))        (Q0.15)
 *   g = rsr(zeta * (32768 - z), 15) + nu                                                   (0..65534)
 *   h' = sat8(rsr(rsr(g * h~, 8 + e) + z * h, 15))                                         (Q(e).(7-e))
 * x: input_size int8; h: hidden_size int8 (updated in place). Scratch: kp_lstm_scratch_s8 with acc_x and acc_h
 * of H int32 each and tv for the larger of Wx and Wh (kp_matvec_s8_get_buffer_size); `gates` is not used. x
 * must not alias h or the scratch. The layer must satisfy kpgen.quant.limits.kernel_limits and the sigmoid
 * table hold values 0..32767 (make_table's does): then every sum fits int32.
 */
void kp_fastgrnn_step_s8(const kp_fastgrnn_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s);

#ifdef __cplusplus
}
#endif

#endif /* KP_FASTGRNN_STEP_S8_H */
