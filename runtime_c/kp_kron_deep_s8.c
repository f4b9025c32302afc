/*
 * kp_kron_deep_s8.c - kp_matvec_s8 for a matrix of more than two Kronecker factors: the mode-product chain
 * (see kp_matvec_internal.h).
 */
#include "kp_matvec_internal.h"

/* KP_NO_KRON_EXT (models with only two-factor matrices): nothing here is called, so nothing is compiled, and
 * neither the linker map nor the stack report shows this file's frames. ISO C wants one declaration. */
#ifdef KP_NO_KRON_EXT
typedef int kp_kron_deep_s8_dropped_t;
#else

/*
 * Element q of v (q < m) rounded into column i of T^T (m rows of n1_p int16, slots of kp_tslot):
 * sat16(rsr(v[q], ts)) for any ts (kp_rsr32); the usual shifts 1..31 take the loop without per-element checks.
 */
static void kp_round_column(const int32_t *v, int32_t m, int32_t ts, int32_t *tt, int32_t i, int32_t n1_p)
{
    kp_half_t *out = (kp_half_t *)tt + kp_tslot(i, n1_p, m);
    int32_t q;
    if (ts >= 1 && ts <= 31) {
        for (q = 0; q < m; q++, out += n1_p) {
            *out = kp_sat16(kp_rsr32_pos(v[q], ts));
        }
    } else {
        for (q = 0; q < m; q++, out += n1_p) {
            *out = kp_sat16(kp_rsr32(v[q], ts));
        }
    }
}

/*
 * More than two factors (w->inner != NULL): the mode-product chain, without recursion. Levels lv[0] = w,
 * lv[l + 1] = lv[l]->inner, the last one a two-factor matrix. For each of the n1 * n2 * ... sub-vectors of x
 * (one per column of every level's T^T) the last level computes its products (kp_matvec2_s8); they are
 * rounded by the shift of the level above into a column of its T^T. A level whose T^T is complete multiplies
 * it by its A (kp_kron_at_s8, as in two-factor step 2), and that result is rounded into the level above in
 * turn; lv[0]'s is y. Multiply-accumulates: those of the mode products, last factor first.
 * Scratch: the T^T of lv[0 .. d-2] (lv[l]->m2 rows of cols_padded(lv[l]->n1) int16 each, padding columns
 * zero), an int32 result of the largest lv[l]->m2, then the work area of the last level (its kron scratch)
 * or of one widened row of an A (kpgen.codegen.layout.matrix_scratch_words).
 */
KP_STAGE void kp_kron_deep_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    const kp_kron_s8 *lv[KP_MAX_FACTORS - 1];
    int32_t *tt[KP_MAX_FACTORS - 1];
    int32_t col[KP_MAX_FACTORS - 1];
    const kp_kron_s8 *last;
    int32_t d = 0, l, s, subs = 1, res_len = 0, step;
    int32_t *res, *work = scratch;

    for (last = w; last != 0 && d < KP_MAX_FACTORS - 1; last = last->inner) {
        lv[d++] = last;
    }
    for (l = 0; l + 1 < d; l++) {
        const int32_t n1_p = kp_cols_padded(lv[l]->n1);
        const int32_t m = lv[l]->m2;
        int32_t q, i;
        tt[l] = work;
        col[l] = 0;
        for (i = lv[l]->n1; i < n1_p; i++) { /* padding columns: zero, never written again */
            kp_half_t *out = (kp_half_t *)work + kp_tslot(i, n1_p, m);
            for (q = 0; q < m; q++, out += n1_p) {
                *out = 0;
            }
        }
        work += m * (n1_p >> 1);
        subs *= lv[l]->n1;
        res_len = m > res_len ? m : res_len;
    }
    res = work;
    work += res_len;
    last = lv[d - 1];
    step = last->n1 * last->n2;
    for (s = 0; s < subs; s++, x += step) {
        kp_matvec2_s8(last, x, work, res);
        for (l = d - 2; l >= 0; l--) {
            const kp_kron_s8 *const v = lv[l];
            kp_round_column(res, v->m2, v->t_shift, tt[l], col[l], kp_cols_padded(v->n1));
            if (++col[l] < v->n1) {
                break;
            }
            col[l] = 0; /* T^T of level l complete: its products, rounded into the level above next */
            kp_kron_at_s8(v, tt[l], work, l == 0 ? y : res);
        }
    }
}
#endif /* KP_NO_KRON_EXT */
