/*
 * kp_fastrnn_step_s8.h - one time step of a FastRNN layer (Kusupati et al. 2018) whose matrices are
 * Kronecker products of int8 factors.
 */
#ifndef KP_FASTRNN_STEP_S8_H
#define KP_FASTRNN_STEP_S8_H

#include <stdint.h>

#include "kp_lstm_step_s8.h"
#include "kp_matvec_s8.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A FastRNN layer; all arrays are const (flash). */
typedef struct {
    int32_t input_size, hidden_size;
    kp_kron_s8 wx;                     /* H x I, packed */
    kp_kron_s8 wh;                     /* H x H, packed */
    int32_t mult_x, shift_x;           /* requantizers to Q3.12: mult 1..2^31-1, shift 1..32 */
    int32_t mult_h, shift_h;
    const kp_bias_t *bias;             /* H, Q3.12 */
    int32_t alpha, beta;               /* Q0.15, 0..32767 */
    int32_t state_exp;                 /* e, 0..7: h is Q(e).(7-e), one step 2^(e-7) */
    const int16_t *tanh_table;         /* KP_ACT_TABLE_SIZE entries (golden.make_table) */
} kp_fastrnn_params_s8;

/*
 * One FastRNN step (docs/quantization.md, "FastRNN step"), gx = rq(Wx x), gh = rq(Wh h) in Q3.12:
 *   h~ = tanh(sat16(gx + gh + bias))                                        (Q0.15)
 *   h' = sat8(rsr(rsr(alpha * h~, 8 + e) + beta * h, 15))                   (Q(e).(7-e), e = state_exp)
 * x: input_size int8; h: hidden_size int8 (updated in place). Scratch: kp_lstm_scratch_s8 with acc_x and acc_h
 * of H int32 each and tv for the larger of Wx and Wh; `gates` is not used. x must not alias h or the scratch.
 * The layer must satisfy kpgen.quant.limits.kernel_limits (the quantizer guarantees it): then every sum fits int32.
 */
void kp_fastrnn_step_s8(const kp_fastrnn_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s);

#ifdef __cplusplus
}
#endif

#endif /* KP_FASTRNN_STEP_S8_H */
