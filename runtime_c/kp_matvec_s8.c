/*
 * kp_matvec_s8.c - Kronecker-product matrix-vector product, the public entry (see kp_matvec_s8.h).
 *
 * kp_matvec_s8 picks the stages (kp_matvec_internal.h): a matrix with a kernel emitted for its shapes (w->fixed,
 * in builds with KP_FIXED_KERNELS) runs that; a plain two-factor or dense matrix goes straight to
 * kp_matvec2_s8 (inlined here); more factors or hybrid-KP top rows go through kp_matvec_ext_s8 after one NULL
 * check.
 */
#include "kp_matvec_s8.h"

#include "kp_matvec_internal.h"

#ifndef KP_NO_KRON_EXT
/*
 * A matrix with more than two factors or HKP top rows: the top rows, then the Kronecker part below them.
 * A build whose matrices are all plain two-factor (or dense) ones may define KP_NO_KRON_EXT: kp_matvec_s8 then
 * never calls this, the linker drops it and the chains below, and the model's stack bound loses their frames
 * (kpgen's emitted Makefile and CMakeLists.txt define it for such models; their model.c refuses it otherwise).
 */
static KP_STAGE void kp_matvec_ext_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    const int32_t top_rows = w->top != 0 ? w->top->m1 : 0;
    if (top_rows > 0) {
        kp_hkp_top_s8(w->top, w->top_shift, x, scratch, y);
    }
    if (w->inner != 0) {
        kp_kron_deep_s8(w, x, scratch, y + top_rows);
    } else {
        kp_matvec2_s8(w, x, scratch, y + top_rows);
    }
    if (top_rows > 0 && w->top_groups > 1) {
        kp_hkp_spread_s32(y, top_rows, w->m1 * w->m2, w->top_groups, scratch);
    }
}
#endif

void kp_matvec_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
#ifdef KP_FIXED_KERNELS
    if (w->fixed != 0) {
        kp_matvec_fixed_s8(w, x, scratch, y);
        return;
    }
#endif
#ifdef KP_ONLY_FIXED
    {
        /* A build whose matrices all have kernels of their own (the emitter defines KP_ONLY_FIXED then, and its
         * model.c refuses it otherwise) links none of the generic stages; any other matrix gives zeros. */
        int32_t r;
        (void)x;
        (void)scratch;
        for (r = 0; r < w->m1 * w->m2; r++) {
            y[r] = 0;
        }
    }
#else
#ifndef KP_NO_KRON_EXT
    if (w->inner != 0 || w->top != 0) {
        kp_matvec_ext_s8(w, x, scratch, y);
        return;
    }
#endif
    kp_matvec2_s8(w, x, scratch, y);
#endif
}

int32_t kp_matvec_s8_get_buffer_size(const kp_kron_s8 *w)
{
    const kp_kron_s8 *lv = w;
    int32_t words, tts = 0, res = 0, widest_a = 0, levels = 0;
    while (lv->inner != 0 && levels < KP_MAX_FACTORS - 2) {
        const int32_t half_p1 = kp_cols_padded(lv->n1) / 2;
        tts += lv->m2 * half_p1;
        res = lv->m2 > res ? lv->m2 : res;
        widest_a = half_p1 > widest_a ? half_p1 : widest_a;
        lv = lv->inner;
        levels++;
    }
    words = kp_kron2_scratch_words(lv->n1, lv->m2, lv->n2);
    if (levels > 0) {
        words = tts + res + (words > widest_a ? words : widest_a);
    }
    if (w->top != 0) {
        const int32_t top_words = kp_kron2_scratch_words(w->top->n1, 1, 1);
        words = top_words > words ? top_words : words;
        if (w->top_groups > 1 && w->top->m1 > words) {
            words = w->top->m1;
        }
    }
    return words;
}
