/*
 * kp_common.h - integer helpers and code-path selection shared by the kpgen int8 kernels.
 *
 * The arithmetic follows docs/quantization.md; kpgen/reference/golden.py is the reference. Right shifts of
 * negative values are arithmetic (GCC defines them so). Three code paths compute the same bits:
 *   portable  plain C (Cortex-M0/M0+/M3, and the host)
 *   KP_DSP    Armv7E-M / Armv8-M DSP instructions (SMLAD, SXTB16, SMMLAR, SSAT) via <arm_acle.h>
 *   KP_MVE    Helium (Armv8.1-M MVE) via <arm_mve.h>, for the matrix kernels; the rest uses KP_DSP
 * Inline assembly (KP_ARM_ASM: GCC or Clang extended asm on an Arm target) is used only where the compiler's own
 * code from the intrinsics is slower; every such place has a C or intrinsics fallback with the same result
 * (define KP_NO_ASM to build it). Compiler attributes sit behind __GNUC__ with a plain fallback.
 * Packed operands are little-endian int32 words (kpgen/codegen/layout.py): byte k of a word is bits 8k..8k+7.
 */
#ifndef KP_COMMON_H
#define KP_COMMON_H

#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kpgen runtime: packed weights are little-endian words; big-endian targets are not supported"
#endif

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#define KP_DSP 1
#endif

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1) && !defined(KP_NO_MVE)
#include <arm_mve.h>
#define KP_MVE 1
#endif

#if defined(__GNUC__) && (defined(__arm__) || defined(__thumb__)) && !defined(KP_NO_ASM)
#define KP_ARM_ASM 1
#endif

/*
 * C99 restrict for the kernels' pointer arguments that never alias. Armv6-M builds leave it out: with its eight
 * low registers GCC 12 then keeps the invariant struct fields it may hoist in spill slots, which costs more than
 * reloading them (measured on the shipped examples: 0.6% more instructions on the Cortex-M0).
 */
#if defined(__ARM_ARCH_6M__)
#define KP_RESTRICT
#else
#define KP_RESTRICT restrict
#endif

/*
 * Armv6-M reads the block layout's int8 weights biased by 128, stored as the uint8 w + 128
 * (kpgen.codegen.layout.pack_blocks(biased=True), which the emitter picks for these cores): LDRB takes an
 * immediate offset where LDRSB takes only a register, so a weight costs one load, and the kernels subtract 128
 * times the vector's sum once per row. Other targets may define KP_BIASED_BLOCKS to test that path (host tests).
 */
#if defined(__ARM_ARCH_6M__) && !defined(KP_BIASED_BLOCKS)
#define KP_BIASED_BLOCKS 1
#endif
#if defined(KP_BIASED_BLOCKS) && defined(KP_DSP)
#error "KP_BIASED_BLOCKS is the layout of cores without the DSP extension"
#endif

/*
 * Storage type of the gate biases (the cell steps' bias vectors; kpgen.ir.ModelQ.bias_bits): int16 when the model
 * was emitted with them all in int16 (kpgen puts -DKP_BIAS16 in its build files), else int32. The kernels widen
 * each value to int32 as they load it (LDRSH instead of LDR), so the sums are the same numbers either way. The
 * runtime defines kp_bias16_runtime or kp_bias32_runtime (kp_activation_s16.c) and every emitted model.c calls the
 * one of its own width (KP_BIAS_RUNTIME): a model and a runtime built for different widths do not link.
 */
#if defined(KP_BIAS16)
typedef int16_t kp_bias_t;
#define KP_BIAS_RUNTIME kp_bias16_runtime
#else
typedef int32_t kp_bias_t;
#define KP_BIAS_RUNTIME kp_bias32_runtime
#endif
#ifdef __cplusplus
extern "C" {
#endif
/* The runtime's gate-bias width, 16 or 32: only the function of the width it was built for exists. */
int32_t kp_bias16_runtime(void);
int32_t kp_bias32_runtime(void);
#ifdef __cplusplus
}
#endif

/* A pipeline stage: kept out of line so a per-function instruction profile shows it by name. */
#if defined(__GNUC__)
#define KP_STAGE __attribute__((noinline))
#else
#define KP_STAGE
#endif

/*
 * Round-shift-right by s in 1..31 only (the caller checks s once, outside its loop): (v >> s) + bit (s-1) of v,
 * which is (v + 2^(s-1)) >> s in exact arithmetic, round half up, and cannot overflow.
 */
static inline int32_t kp_rsr32_pos(int32_t v, int32_t s)
{
    return (v >> s) + ((v >> (s - 1)) & 1);
}

/*
 * Round-shift-right, round half up: (v + 2^(s-1)) >> s in exact arithmetic, for every int32 v and s.
 * s <= 0: v (no rounding); 1..31: kp_rsr32_pos; s >= 32: 0 (|v| <= 2^31 <= 2^(s-1), so the exact result is 0).
 */
static inline int32_t kp_rsr32(int32_t v, int32_t s)
{
    if (s <= 0) {
        return v;
    }
    if (s > 31) {
        return 0;
    }
    return kp_rsr32_pos(v, s);
}

/* The rounding term of a right shift by s in 0..31: 2^(s-1), 0 for s == 0 (no rounding). */
static inline int32_t kp_round_half(int32_t s)
{
    return (int32_t)(((uint32_t)1 << s) >> 1);
}

/* Clamp to -128..127. */
static inline int8_t kp_sat8(int32_t v)
{
    return (int8_t)(v < INT8_MIN ? INT8_MIN : (v > INT8_MAX ? INT8_MAX : v));
}

/* Clamp to -32768..32767. */
static inline int16_t kp_sat16(int32_t v)
{
    return (int16_t)(v < INT16_MIN ? INT16_MIN : (v > INT16_MAX ? INT16_MAX : v));
}

/* Clamp to int16 / int8 with SSAT where the core has it (GCC does not emit it for the plain clamp). */
static inline int32_t kp_ssat16(int32_t v)
{
#if defined(KP_DSP) && defined(__GNUC__) && (defined(__arm__) || defined(__thumb__))
    return (int32_t)__builtin_arm_ssat(v, 16); /* <arm_acle.h>'s __ssat macro trips -Wsign-conversion */
#elif defined(KP_DSP)
    return __ssat(v, 16);
#else
    return kp_sat16(v);
#endif
}

static inline int32_t kp_ssat8(int32_t v)
{
#if defined(KP_DSP) && defined(__GNUC__) && (defined(__arm__) || defined(__thumb__))
    return (int32_t)__builtin_arm_ssat(v, 8);
#elif defined(KP_DSP)
    return __ssat(v, 8);
#else
    return kp_sat8(v);
#endif
}

/* Clamp a 64-bit value to the int32 range. */
static inline int32_t kp_sat32(int64_t v)
{
    return (int32_t)(v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v));
}

/*
 * Requantize an int32 accumulator by the real multiplier mult / 2^shift: sat32((acc * mult + 2^(shift-1)) >>
 * shift) in int64, for any int32 acc and mult. The quantizer's range is mult 1..2^31-1, shift 1..62; outside
 * it the result is still exact: shift <= 0 gives sat32(acc * mult) (no rounding), shift >= 63 the exact 0 or 1
 * without a 64-bit overflow. The general form; the gates use kp_gate_rq below.
 */
static inline int32_t kp_requantize(int32_t acc, int32_t mult, int32_t shift)
{
    const int64_t prod = (int64_t)acc * (int64_t)mult;
    if (shift <= 0) {
        return kp_sat32(prod);
    }
    if (shift > 62) { /* |prod| <= 2^62: the exact result is 0, or 1 for prod = 2^62 and shift 63 */
        return shift == 63 && prod == ((int64_t)1 << 62) ? 1 : 0;
    }
    return kp_sat32((prod + ((int64_t)1 << (shift - 1))) >> shift);
}

/* The low and high int16 of a word holding an int16 pair, and the pair (lo, hi) as a word. */
static inline int32_t kp_lo16(int32_t w)
{
    return (int32_t)(int16_t)(uint16_t)((uint32_t)w & 0xFFFFu);
}

static inline int32_t kp_hi16(int32_t w)
{
    return w >> 16;
}

static inline int32_t kp_pack16(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16));
}

/*
 * An int16 that may live inside int32 words: the int16 vectors are int32 scratch words (loaded a pair at a
 * time), and a few kernels store single elements into them. may_alias tells GCC and Clang so.
 */
#if defined(__GNUC__)
typedef int16_t kp_half_t __attribute__((may_alias));
#else
typedef int16_t kp_half_t;
#endif

/* acc * 2^l for an acc the quantizer guarantees to stay in int32 (no undefined signed shift). */
static inline int32_t kp_scale_pow2(int32_t acc, int32_t l)
{
    return (int32_t)((uint32_t)acc << l);
}

#if defined(KP_DSP) && defined(KP_ARM_ASM)
/* SXTB16 of the word rotated right by 8: bytes 1 and 3 sign-extended to an int16 pair (one instruction). */
static inline int32_t kp_sxtb16_ror8(int32_t w)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
    return r;
}

/* c + ((a * b + 2^31) >> 32): SMMLAR, the 64-bit product rounded to its high word, plus c (mod 2^32). */
static inline int32_t kp_mlahr(int32_t a, int32_t b, int32_t c)
{
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

/* Two consecutive words with one post-indexed LDRD: *a = p[0], *b = p[1]; returns p + 2 (p 4-aligned). */
typedef struct {
    int32_t w[2];
} kp_word2_t;

static inline const int32_t *kp_ld2(const int32_t *p, int32_t *a, int32_t *b)
{
    int32_t x, y;
    __asm__("ldrd %0, %1, [%2], #8" : "=&r"(x), "=&r"(y), "+r"(p) : "m"(*(const kp_word2_t *)p));
    *a = x;
    *b = y;
    return p;
}

/* p[0] = a, p[1] = b with one post-indexed STRD; returns p + 2 (p 4-aligned). */
static inline int32_t *kp_st2(int32_t *p, int32_t a, int32_t b)
{
    __asm__("strd %2, %3, [%1], #8" : "=m"(*(kp_word2_t *)p), "+r"(p) : "r"(a), "r"(b));
    return p;
}
#else
static inline const int32_t *kp_ld2(const int32_t *p, int32_t *a, int32_t *b)
{
    *a = p[0];
    *b = p[1];
    return p + 2;
}

static inline int32_t *kp_st2(int32_t *p, int32_t a, int32_t b)
{
    p[0] = a;
    p[1] = b;
    return p + 2;
}
#if defined(KP_DSP)
/* Host builds with stand-in intrinsics (tests): the same operations in C. */
static inline int32_t kp_sxtb16_ror8(int32_t w)
{
    const uint32_t u = (uint32_t)w;
    return __sxtb16((int32_t)((u >> 8) | (u << 24)));
}
#endif
#if defined(__ARM_ARCH_6M__) || defined(KP_MUL16)
/*
 * Armv6-M has no 32 x 32 -> 64 multiply (a library call): the same number from four 16 x 16 products
 * (KP_MUL16 selects this on any target, for the host tests).
 * a*b + 2^31 = 2^32 (ah bh + (m1 >> 16) + (m2 >> 16)) + 2^16 t + (lo & 0xFFFF), t = (m1 & 0xFFFF) +
 * (m2 & 0xFFFF) + (lo >> 16) + 2^15, with m1 = ah bl, m2 = al bh, lo = al bl (al, bl the unsigned low halves);
 * every term fits 32 bits and the floor of the quotient by 2^32 is the first term plus t >> 16.
 */
static inline int32_t kp_mlahr(int32_t a, int32_t b, int32_t c)
{
    const int32_t ah = a >> 16, bh = b >> 16;
    const uint32_t al = (uint32_t)a & 0xFFFFu, bl = (uint32_t)b & 0xFFFFu;
    const int32_t m1 = ah * (int32_t)bl;
    const int32_t m2 = (int32_t)al * bh;
    const uint32_t lo = al * bl;
    const uint32_t t = ((uint32_t)m1 & 0xFFFFu) + ((uint32_t)m2 & 0xFFFFu) + (lo >> 16) + 0x8000u;
    const int32_t hi = ah * bh + (m1 >> 16) + (m2 >> 16) + (int32_t)(t >> 16);
    return (int32_t)((uint32_t)c + (uint32_t)hi);
}
#else
static inline int32_t kp_mlahr(int32_t a, int32_t b, int32_t c)
{
    const int64_t hi = ((int64_t)a * (int64_t)b + ((int64_t)1 << 31)) >> 32;
    return (int32_t)((uint32_t)c + (uint32_t)(int32_t)hi);
}
#endif
#endif

/*
 * The gate requantizer of docs/quantization.md in 32-bit arithmetic: rsr(acc * mult, shift) for shift in
 * 1..32 and |acc| < 2^(shift-1) (kpgen.quant.limits.kernel_limits), as c + SMMULR(acc * 2^(32-shift), mult).
 */
static inline int32_t kp_gate_rq(int32_t acc, int32_t mult, int32_t shift, int32_t c)
{
    return kp_mlahr(kp_scale_pow2(acc, 32 - shift), mult, c);
}

/*
 * Position of element i in a packed int16 vector that a matrix of cols_p padded columns multiplies.
 * DSP path: within each group of 4, order (0, 2, 1, 3), so that one word holds (v[i], v[i+2]) and the next
 * (v[i+1], v[i+3]): the pairs SXTB16 makes of four int8 weights (bytes 0, 2) and of the word rotated by 8
 * (bytes 1, 3). Two-column matrices, the portable path and Helium use the natural order. The order swaps
 * bits 0 and 1 of i, so it is its own inverse.
 */
static inline int32_t kp_vslot(int32_t i, int32_t cols_p)
{
#if defined(KP_DSP) && !defined(KP_MVE)
    if (cols_p > 2) {
        return (i & ~(int32_t)3) | ((i & 1) << 1) | ((i >> 1) & 1);
    }
#else
    (void)cols_p;
#endif
    return i;
}

/*
 * The same for the vectors of the rows kernel (A T with m2 > 1): the DSP order on cores with SMLAD but no Helium,
 * the natural order on the others (Helium reads a row of A with VLDRB.S16 and multiplies with VMLADAV).
 */
static inline int32_t kp_vslot_rows(int32_t i, int32_t cols_p)
{
#if defined(KP_DSP) && !defined(KP_MVE)
    if (cols_p > 2) {
        return (i & ~(int32_t)3) | ((i & 1) << 1) | ((i >> 1) & 1);
    }
#else
    (void)cols_p;
#endif
    return i;
}

/* Byte k of an array in the block layout (kpgen.codegen.layout.pack_blocks) as the int8 weight it holds. */
static inline int32_t kp_block_byte(const int32_t *w, int32_t k)
{
#if defined(KP_BIASED_BLOCKS)
    return (int32_t)((const uint8_t *)w)[k] - 128;
#else
    return ((const int8_t *)w)[k];
#endif
}

/* Padded column count of a packed matrix: 2 for one or two columns, else a multiple of 4 (kpgen.codegen.layout). */
static inline int32_t kp_cols_padded(int32_t cols)
{
    return cols <= 2 ? 2 : (cols + 3) & ~(int32_t)3;
}

#endif /* KP_COMMON_H */
