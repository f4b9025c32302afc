/*
 * kp_fc_s8.c - fully connected layer (see kp_fc_s8.h).
 */
#include "kp_fc_s8.h"

#include "kp_common.h"

#if defined(KP_DSP)
#include <string.h>
#endif

/*
 * Portable path: int32 multiply-accumulate per element.
 * DSP path (__ARM_FEATURE_DSP): four int8 of w and x per step, read with memcpy; SXTB16 (and SXTB16
 * ROR #8) widens bytes (0, 2) and (1, 3) to int16 pairs, SMLAD accumulates both; the odd tail runs the
 * portable loop. The same products are summed exactly, so both paths give the same bits.
 */
void kp_fc_s8(const int8_t *w, const int32_t *bias, int32_t rows, int32_t cols, const int8_t *x, int32_t *out)
{
    int32_t k, j;
    for (k = 0; k < rows; k++) {
        const int8_t *wk = w + k * cols;
        int32_t sum = bias[k];
        j = 0;
#if defined(KP_DSP)
        for (; j + 4 <= cols; j += 4) {
            int32_t ww, xw;
            memcpy(&ww, wk + j, 4);
            memcpy(&xw, x + j, 4);
            sum = __smlad(__sxtb16(ww), __sxtb16(xw), sum);
            sum = __smlad(kp_sxtb16_ror8(ww), kp_sxtb16_ror8(xw), sum);
        }
#endif
        for (; j < cols; j++) {
            sum += (int32_t)wk[j] * (int32_t)x[j];
        }
        out[k] = sum;
    }
}
