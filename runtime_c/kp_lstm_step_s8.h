/*
 * kp_lstm_step_s8.h - one time step of an LSTM layer whose matrices are Kronecker products of int8 factors.
 */
#ifndef KP_LSTM_STEP_S8_H
#define KP_LSTM_STEP_S8_H

#include <stdint.h>

#include "kp_common.h" /* kp_bias_t: the gate biases' storage type, int16 under KP_BIAS16, else int32 */
#include "kp_matvec_s8.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Everything one layer needs; all arrays are const (flash). Gate order (i, f, g, o), H rows each. The biases are
 * kp_bias_t (kp_common.h), here and in the other cells' params. */
typedef struct {
    int32_t input_size, hidden_size;
    kp_kron_s8 wx;                     /* 4H x I: Ax (x) Bx, packed */
    kp_kron_s8 wh;                     /* 4H x H: Ah (x) Bh, packed */
    int32_t mult_x, shift_x;           /* gate requantizers: mult 1..2^31-1, shift 1..32 */
    int32_t mult_h, shift_h;
    const kp_bias_t *bias;             /* 4H, Q3.12 */
    int32_t cell_frac;                 /* 0..15 */
    const int16_t *sigmoid_table;      /* KP_ACT_TABLE_SIZE entries each (golden.make_table) */
    const int16_t *tanh_table;
} kp_lstm_params_s8;

/* Scratch of one step (shared by all layers; sizes from kpgen.codegen.emit.arena_fields). */
typedef struct {
    int32_t *acc_x, *acc_h;            /* 4H int32 each: Wx x and Wh h */
    int32_t *gates;                    /* 2H words: the gate values (int16), unit by unit: (i, f), (g, o) */
    int32_t *tv;                       /* kp_matvec_s8 scratch, for the larger of Wx and Wh */
} kp_lstm_scratch_s8;

/*
 * One LSTM step (docs/quantization.md, lstm_step_s8):
 *   z = sat16(requantize(Wx x, mult_x, shift_x) + requantize(Wh h, mult_h, shift_h) + bias)  (Q3.12)
 *   i, f, o = sigmoid(z), g = tanh(z)                                                          (Q0.15)
 *   c' = sat16(rsr(f * c, 15) + rsr(i * g, 30 - cell_frac))
 *   h' = sat8(rsr(o * tanh(c' in Q3.12), 23))                                                  (Q0.7)
 * The layer must satisfy kpgen.quant.limits.kernel_limits (the quantizer guarantees it): then every sum fits int32.
 * x: input_size int8; h: hidden_size int8 (updated in place); c: hidden_size int16 (updated in place).
 * x must not alias h or the scratch. Stages (separate functions, named in a profile): kp_matvec_s8's
 * (kp_dense_x_s16 or kp_kron_xbt_s8, then kp_kron_at_s8) for Wx x and Wh h, then kp_lstm_gates_s16 (requantize,
 * bias, saturate, sigmoid / tanh: one pass; it overwrites the scratch acc_h on Armv6-M), kp_lstm_cell_s16 (c',
 * tanh(c'), h'; eight units a step with Helium).
 */
void kp_lstm_step_s8(const kp_lstm_params_s8 *p, const int8_t *x, int8_t *h, int16_t *c,
                     const kp_lstm_scratch_s8 *s);

#ifdef __cplusplus
}
#endif

#endif /* KP_LSTM_STEP_S8_H */
