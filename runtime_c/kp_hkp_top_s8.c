/*
 * kp_hkp_top_s8.c - hybrid KP: the dense top rows of a kp_matvec_s8 matrix (see kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

/* KP_NO_KRON_EXT (models with only two-factor matrices): nothing here is called, so nothing is compiled, and
 * neither the linker map nor the stack report shows this file's frames. ISO C wants one declaration. */
#ifdef KP_NO_KRON_EXT
typedef int kp_hkp_top_s8_dropped_t;
#else

/*
 * The rows' products (a dense two-factor product), then the scaling into the Kronecker part's unit: a left
 * shift modulo 2^32 (kp_scale_pow2) or a rounding right shift (kp_rsr32). Shifts of 32 or more give 0 either
 * way, so every top_shift has a defined result.
 */
KP_STAGE void kp_hkp_top_s8(const kp_kron_s8 *top, int32_t top_shift, const int8_t *x, int32_t *scratch, int32_t *y)
{
    const int32_t rows = top->m1;
    int32_t r;
    kp_matvec2_s8(top, x, scratch, y);
    if (top_shift > 31 || top_shift < -31) {
        for (r = 0; r < rows; r++) {
            y[r] = 0;
        }
    } else if (top_shift > 0) {
        for (r = 0; r < rows; r++) {
            y[r] = kp_scale_pow2(y[r], top_shift);
        }
    } else if (top_shift < 0) {
        for (r = 0; r < rows; r++) {
            y[r] = kp_rsr32(y[r], -top_shift);
        }
    }
}

/*
 * The Kronecker blocks move towards the front first, block 0 first: block g's destination ends where block
 * g + 1's source starts or before, and each destination starts at or before its source, so a forward copy never
 * reads a word it has already overwritten. The top rows, saved first, then fill the gaps.
 */
KP_STAGE void kp_hkp_spread_s32(int32_t *y, int32_t top_rows, int32_t kp_rows, int32_t groups, int32_t *scratch)
{
    const int32_t t = top_rows / groups;
    const int32_t block = (top_rows + kp_rows) / groups;
    const int32_t rest = block - t;
    int32_t g, u;
    for (u = 0; u < top_rows; u++) {
        scratch[u] = y[u];
    }
    for (g = 0; g < groups; g++) {
        const int32_t *src = y + top_rows + g * rest;
        int32_t *dst = y + g * block + t;
        for (u = 0; u < rest; u++) {
            dst[u] = src[u];
        }
    }
    for (g = 0; g < groups; g++) {
        for (u = 0; u < t; u++) {
            y[g * block + u] = scratch[g * t + u];
        }
    }
}
#endif /* KP_NO_KRON_EXT */
