/*
 * kp_gru_step_s8.h - one time step of a GRU layer whose matrices are Kronecker products of int8 factors.
 */
#ifndef KP_GRU_STEP_S8_H
#define KP_GRU_STEP_S8_H

#include <stdint.h>

#include "kp_lstm_step_s8.h"
#include "kp_matvec_s8.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Everything one layer needs; all arrays are const (flash). Gate order (r, z, n), H rows each. */
typedef struct {
    int32_t input_size, hidden_size;
    kp_kron_s8 wx;                     /* 3H x I, packed */
    kp_kron_s8 wh;                     /* 3H x H, packed */
    int32_t mult_x, shift_x;           /* gate requantizers: mult 1..2^31-1, shift 1..32 */
    int32_t mult_h, shift_h;
    const kp_bias_t *bias;             /* 3H, Q3.12: b_ih + (b_hr, b_hz, 0) */
    const kp_bias_t *bias_hn;          /* H, Q3.12: b_hn, inside the reset gate's product */
    const int16_t *sigmoid_table;      /* KP_ACT_TABLE_SIZE entries each (golden.make_table) */
    const int16_t *tanh_table;
} kp_gru_params_s8;

/*
 * One GRU step (docs/quantization.md, "GRU step"; torch.nn.GRU's equations), gx = rq(Wx x), gh = rq(Wh h):
 *   r = sigmoid(sat16(gx_r + gh_r + bias_r)), z = sigmoid(sat16(gx_z + gh_z + bias_z))          (Q0.15)
 *   n = tanh(sat16(gx_n + bias_n + rsr(r * sat16(gh_n + bias_hn), 15)))                          (Q0.15)
 *   h' = sat8(rsr(z * (h << 8) + (32768 - z) * n, 23))                                           (Q0.7)
 * The layer must satisfy kpgen.quant.limits.kernel_limits (the quantizer guarantees it) and the sigmoid table must
 * hold values 0..32767 (make_table's does): then every sum fits int32.
 * x: input_size int8; h: hidden_size int8 (updated in place). Scratch: kp_lstm_scratch_s8 with acc_x and acc_h
 * of 3H int32 each and tv for the larger of Wx and Wh; `gates` is not used. x must not alias h or the scratch.
 */
void kp_gru_step_s8(const kp_gru_params_s8 *p, const int8_t *x, int8_t *h, const kp_lstm_scratch_s8 *s);

#ifdef __cplusplus
}
#endif

#endif /* KP_GRU_STEP_S8_H */
