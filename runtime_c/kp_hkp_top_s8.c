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
 * Copy n words from src to dst, where dst <= src if the ranges overlap, four at a time: each group of four is read
 * before it is written, and a group's writes end below the next group's reads, so nothing is read after it was
 * overwritten. On Thumb-2 cores one LDMIA and one STMIA move a group (GCC does not merge the four loads itself,
 * since dst and src may alias); elsewhere, and for the last n % 4 words, plain C.
 */
static void kp_move_down_s32(int32_t *dst, const int32_t *src, int32_t n)
{
#if defined(__thumb2__)
    int32_t groups = n >> 2;
    if (groups > 0) {
        __asm volatile("1:\n\t"
                       "ldmia %[s]!, {r4, r5, r6, r7}\n\t"
                       "stmia %[d]!, {r4, r5, r6, r7}\n\t"
                       "subs %[g], %[g], #1\n\t"
                       "bne 1b"
                       : [s] "+r"(src), [d] "+r"(dst), [g] "+r"(groups)
                       :
                       : "r4", "r5", "r6", "r7", "cc", "memory");
    }
    n &= 3;
#else
    for (; n >= 4; n -= 4) {
        const int32_t a = src[0], b = src[1], c = src[2], d = src[3];
        dst[0] = a;
        dst[1] = b;
        dst[2] = c;
        dst[3] = d;
        src += 4;
        dst += 4;
    }
#endif
    for (; n > 0; n--) {
        *dst++ = *src++;
    }
}

/*
 * The Kronecker blocks move towards the front, block 0 first: block g moves down by (groups - 1 - g) * t words
 * (the last one stays where it is), its destination ends where block g + 1's source starts or before, so no block
 * is overwritten before it moves. The top rows, saved first, then fill the gaps.
 */
KP_STAGE void kp_hkp_spread_s32(int32_t *y, int32_t top_rows, int32_t kp_rows, int32_t groups, int32_t *scratch)
{
    const int32_t t = top_rows / groups;
    const int32_t block = (top_rows + kp_rows) / groups;
    const int32_t rest = block - t;
    int32_t g;
    kp_move_down_s32(scratch, y, top_rows); /* scratch and y do not overlap: any order is safe */
    for (g = 0; g + 1 < groups; g++) {
        kp_move_down_s32(y + g * block + t, y + top_rows + g * rest, rest);
    }
    for (g = 0; g < groups; g++) {
        kp_move_down_s32(y + g * block, scratch + g * t, t);
    }
}
#endif /* KP_NO_KRON_EXT */
