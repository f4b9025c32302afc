/*
 * kp_fc_relu_s8.c - fully connected layer, ReLU, requantization to int8 (see kp_fc_relu_s8.h).
 */
#include "kp_fc_relu_s8.h"

#include "kp_fc_s8.h"

/* Each row's sum is kp_fc_s8 on one row (its DSP path included), so both heads sum exactly alike. */
void kp_fc_relu_s8(const int8_t *w, const int32_t *bias, int32_t rows, int32_t cols, const int8_t *x, int32_t mult,
                   int32_t shift, int8_t *out)
{
    int32_t k;
    for (k = 0; k < rows; k++) {
        int32_t acc;
        int64_t v;
        kp_fc_s8(w + k * cols, bias + k, 1, cols, x, &acc);
        if (acc < 0) {
            acc = 0;
        }
        v = ((int64_t)acc * (int64_t)mult + ((int64_t)1 << (shift - 1))) >> shift;
        out[k] = (int8_t)(v > 127 ? 127 : v);
    }
}
