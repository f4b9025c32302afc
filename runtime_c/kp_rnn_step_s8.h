/*
 * kp_rnn_step_s8.h - one time step of a plain (Elman) RNN layer, tanh or relu (torch.nn.RNN), whose matrices are
 * Kronecker products of int8 factors.
 */
#ifndef KP_RNN_STEP_S8_H
#define KP_RNN_STEP_S8_H

#include <stdint.h>

#include "kp_lstm_step_s8.h"
#include "kp_matvec_s8.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A plain RNN layer; all arrays are const (flash). */
typedef struct {
    int32_t input_size, hidden_size;
    kp_kron_s8 wx;                     /* H x I, packed */
    kp_kron_s8 wh;                     /* H x H, packed */
    int32_t mult_x, shift_x;           /* requantizers to the pre-activation unit: mult 1..2^31-1, shift 1..32 */
    int32_t mult_h, shift_h;
    const kp_bias_t *bias;             /* H: Q3.12 (tanh) or Q(e).(15-e) (relu) */
    int32_t relu;                      /* 0: tanh, 1: relu */
    int32_t state_exp;                 /* relu: e, 0..7, h is Q(e).(7-e); tanh: 0, h is Q0.7 */
    const int16_t *tanh_table;         /* KP_ACT_TABLE_SIZE entries (golden.make_table); tanh only */
} kp_rnn_params_s8;

/*
 * One plain RNN step (docs/quantization.md, "Plain RNN step"), s = rq(Wx x) + rq(Wh h) + bias in int32:
 *   tanh: h' = sat8(rsr(tanh(sat16(s)), 8))      (s Q3.12, tanh Q0.15, h Q0.7)
 *   relu: h' = sat8(rsr(max(s, 0), 8))           (s Q(e).(15-e), h Q(e).(7-e))
 * x: input_size int8; h: hidden_size int8 (updated in place). Scratch: kp_lstm_scratch_s8 with acc_x and acc_h
 * of H int32 each and tv for the larger of Wx and Wh; `gates` is not used. x must not alias h or the scratch.
 * The layer must satisfy kpgen.quant.limits.kernel_limits (the quantizer guarantees it): then every sum fits int32.
 */
void kp_rnn_step_s8(const kp_rnn_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s);

#ifdef __cplusplus
}
#endif

#endif /* KP_RNN_STEP_S8_H */
