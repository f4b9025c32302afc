/*
 * kp_lstm_step_s8.h - one time step of an LSTM layer whose matrices are Kronecker products of int8 factors.
 */
#ifndef KP_LSTM_STEP_S8_H
#define KP_LSTM_STEP_S8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Everything one layer needs; all arrays are const (flash). Gate order (i, f, g, o), H rows each. */
typedef struct {
    int32_t input_size, hidden_size;
    const int8_t *ax; int32_t ax_rows, ax_cols;  /* Wx = Ax (x) Bx */
    const int8_t *bx; int32_t bx_rows, bx_cols;
    int32_t tx_shift;
    const int8_t *ah; int32_t ah_rows, ah_cols;  /* Wh = Ah (x) Bh */
    const int8_t *bh; int32_t bh_rows, bh_cols;
    int32_t th_shift;
    int32_t mult_x, shift_x, mult_h, shift_h;
    const int32_t *bias;              /* 4H, Q3.12 */
    int32_t cell_frac;
    const int16_t *sigmoid_table, *tanh_table;   /* 257 entries each */
} kp_lstm_params_s8;

/*
 * One LSTM step (docs/quantization.md, lstm_step_s8):
 *   z = sat16(requantize(Wx x, mult_x, shift_x) + requantize(Wh h, mult_h, shift_h) + bias)  (Q3.12)
 *   i, f, o = sigmoid(z), g = tanh(z)                                                          (Q0.15)
 *   c' = sat16(rsr(f * c, 15) + rsr(i * g, 30 - cell_frac))                         (cell_frac in 0..15)
 *   h' = sat8(rsr(o * tanh(c' in Q3.12), 23))                                                  (Q0.7)
 * x: input_size int8; h: hidden_size int8 (updated in place); c: hidden_size int16 (updated in place);
 * acc_x, acc_h: 4H int32 scratch each; t_scratch: max(ax_cols*bx_rows, ah_cols*bh_rows) int16 scratch.
 * x must not alias h.
 */
void kp_lstm_step_s8(const kp_lstm_params_s8 *p, const int8_t *x, int8_t *h, int16_t *c,
                     int32_t *acc_x, int32_t *acc_h, int16_t *t_scratch);

#ifdef __cplusplus
}
#endif

#endif /* KP_LSTM_STEP_S8_H */
