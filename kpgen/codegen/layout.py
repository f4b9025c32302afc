"""Flash layouts the C kernels read: int8 matrices packed into int32 words.

The values are the integer IR's, only their order changes (docs/quantization.md, "Weight layout"): the
kernels then load whole 32-bit words, four int8 weights each, in the order the Cortex-M DSP instructions
(SXTB16/SMLAD) and the Helium ones (VLDRB/VMLADAV) consume them. Nothing here changes a single bit of
arithmetic. Words hold their bytes little-endian: byte k of a word is bits 8k..8k+7.

Two layouts (`pack_kron` picks them, and the C stages in runtime_c/kp_matvec_internal.h follow the same rule):
  blocks  4-row blocks (`pack_blocks`), for every B and for A when m2 == 1 (every dense matrix included): the
          kernel runs down the rows, four accumulators sharing each load of the vector (a row of X, or T);
  rows    row by row (`pack_rows`), for A when m2 > 1: the kernel widens one row of A once and takes its dot
          product with the m2 rows of T^T.
Two variants follow the core the emitter packs for:
  biased  Armv6-M (BIASED_CORES): every blocks byte holds w + 128, read with LDRB at an immediate offset (the
          kernel takes 128 times the vector's sum off each row; exact);
  int16   DSP cores without Helium (b16_for): a shape-specialised matrix's B as int16 pairs (`pack_blocks16`), read
          by SMLAD without unpacking: twice B's bytes, a third fewer instructions in X B^T.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 4  # rows of one block: the kernels keep four accumulators
CHUNK_COLS = 8  # columns of one chunk inside a block (a final chunk of 4 when the padded width is 4 mod 8)


def rows_padded(rows: int) -> int:
    """Rows rounded up to whole 4-row blocks (padding rows are zero)."""
    return -(-rows // BLOCK_ROWS) * BLOCK_ROWS


def cols_padded(cols: int) -> int:
    """Columns rounded up: 2 for one or two columns, else a multiple of 4 (padding columns are zero)."""
    return 2 if cols <= 2 else -(-cols // 4) * 4


def _check_int8(w: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"{what}: expected a 2-D int8 matrix, got {w.dtype} {w.shape}")
    return w


def _words(b: np.ndarray) -> np.ndarray:
    """int8 bytes -> little-endian int32 words."""
    return np.frombuffer(np.ascontiguousarray(b).tobytes(), dtype="<i4").astype(np.int32)


def pack_rows(w: np.ndarray) -> np.ndarray:
    """int8 matrix -> int32 words, row by row: row r is cols_padded(cols) bytes (zero padded) at r * that.

    With 2 padded columns rows go in pairs, word r/2 = [r c0, r+1 c0, r c1, r+1 c1] (rows padded to even):
    SXTB16 of the word gives row r's (c0, c1), rotated by 8 row r+1's.
    """
    w = _check_int8(w, "pack_rows")
    rows, cols = w.shape
    cp = cols_padded(cols)
    if cp == 2:
        full = np.zeros((rows + rows % 2, 2), np.int8)
        full[:rows, :cols] = w
        return _words(full.reshape(-1, 2, 2).transpose(0, 2, 1))
    full = np.zeros((rows, cp), np.int8)
    full[:, :cols] = w
    return _words(full)


def a_in_blocks(m2: int) -> bool:
    """Whether a Kronecker product's A is packed in blocks (m2 == 1, dense included) or in rows."""
    return m2 == 1


def pack_kron(a: np.ndarray, b: np.ndarray, biased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both factors of W = A (x) B as kp_matvec_s8 reads them: (A words, B words)."""
    pa = pack_blocks(a, biased) if a_in_blocks(np.asarray(b).shape[0]) else pack_rows(a)
    return pa, pack_blocks(b, biased)


# Cores whose kernels read the block layout biased (runtime_c/kp_common.h, KP_BIASED_BLOCKS): Armv6-M, where a
# signed byte load takes no immediate offset.
BIASED_CORES = ("cortex-m0", "cortex-m0plus", "cortex-m1")


def biased_for(core: str) -> bool:
    """Whether kernels built for this -mcpu core read the block layout biased by 128."""
    return core in BIASED_CORES


def pack_blocks(w: np.ndarray, biased: bool = False) -> np.ndarray:
    """int8 matrix (rows x cols) -> int32 words in the block layout of the matrix kernels.

    Block b holds rows 4b..4b+3. With 2 padded columns a block is two words,
    [r0c0 r1c0 r0c1 r1c1] [r2c0 r3c0 r2c1 r3c1]: SXTB16 of a word gives one row's (c0, c1) pair, the same word
    rotated by 8 gives the next row's. Otherwise the block is a run of chunks of 8 columns (the last one 4 when
    the padded width is 4 mod 8), and a chunk holds each of the 4 rows' columns contiguously, row 0 first;
    then, for a width of 4 mod 8, one zero word that the Helium kernel may read past the last row.
    biased (Armv6-M, BIASED_CORES): every byte holds w + 128 as uint8 (padding 128, the weight 0).
    """
    w = _check_int8(w, "pack_blocks")
    rows, cols = w.shape
    rp, cp = rows_padded(rows), cols_padded(cols)
    full = np.zeros((rp, cp), np.int8)
    full[:rows, :cols] = w
    if biased:
        full = (full.view(np.uint8) ^ np.uint8(0x80)).view(np.int8)
    blocks = full.reshape(rp // BLOCK_ROWS, BLOCK_ROWS, cp)
    if cp == 2:
        # per block: rows (0, 1) then rows (2, 3), each as [r c0, r' c0, r c1, r' c1]
        out = blocks.reshape(-1, 2, 2, 2).transpose(0, 1, 3, 2)  # [block, row pair, col, row in pair]
    else:
        parts = []
        for c0 in range(0, cp, CHUNK_COLS):
            width = min(CHUNK_COLS, cp - c0)
            parts.append(blocks[:, :, c0 : c0 + width].reshape(len(blocks), -1))
        out = np.concatenate(parts, axis=1)
        if cp % CHUNK_COLS == 4:  # Helium loads 8 bytes for a 4-byte row: one zero word keeps that in bounds
            return np.concatenate([_words(out), np.zeros(1, np.int32)])
    return _words(out)


def pack_blocks16(w: np.ndarray) -> np.ndarray:
    """int8 matrix -> int32 words holding the weights as int16 pairs, for the DSP cores' shape-specialised kernels
    (kp_kron2_fixed with b16): B of X B^T read without unpacking, two words per SMLAD pair of a row.

    The block and chunk order of pack_blocks (4-row blocks, chunks of 8 columns, the last maybe 4; cols_padded
    > 2 only), each row's chunk as int16 in the DSP vector order (kp_vslot: columns 0, 2 | 1, 3 in each group
    of 4), two to a word, low half first.
    """
    w = _check_int8(w, "pack_blocks16")
    rows, cols = w.shape
    rp, cp = rows_padded(rows), cols_padded(cols)
    if cp == 2:
        raise ValueError("pack_blocks16: matrices of more than 2 columns only")
    full = np.zeros((rp, cp), np.int16)
    full[:rows, :cols] = w
    order = np.arange(cp).reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(-1)  # kp_vslot: slot k holds column order[k]
    full = full[:, order]
    blocks = full.reshape(rp // BLOCK_ROWS, BLOCK_ROWS, cp)
    parts = []
    for c0 in range(0, cp, CHUNK_COLS):
        width = min(CHUNK_COLS, cp - c0)
        parts.append(blocks[:, :, c0 : c0 + width].reshape(len(blocks), -1))
    out = np.ascontiguousarray(np.concatenate(parts, axis=1)).astype("<i2")
    return np.frombuffer(out.tobytes(), dtype="<i4").astype(np.int32)


def b16_for(dsp: bool, mve: bool) -> bool:
    """Whether the emitter stores a specialised kernel's B as int16 (pack_blocks16): the DSP path without Helium
    (Helium reads int8 rows with VLDRB.S16 at no extra cost). Twice B's bytes for a third fewer instructions in
    X B^T."""
    return dsp and not mve


def kron_scratch_words(m1: int, n1: int, m2: int, n2: int) -> int:
    """int32 words of scratch kp_matvec_s8 needs for W = A (m1 x n1) (x) B (m2 x n2).

    A dense matrix (B 1x1): the widened input, cols_padded(n1) int16. A Kronecker product: T^T (m2 rows of
    cols_padded(n1) int16), then one widened row of X (cols_padded(n2) int16) or of A (cols_padded(n1)).
    """
    p1, p2 = cols_padded(n1), cols_padded(n2)
    if m2 == 1 and n2 == 1:
        return p1 // 2
    return (m2 * p1 + max(p1, p2)) // 2


# ------------------------------------------------------------------------------------------ whole matrices
#
# A KPMatrixQ becomes a chain of kp_kron_s8 (runtime_c/kp_matvec_s8.h): level l multiplies factor l (its A)
# by the matrix of factors l+1.. (its inner; the last level holds the last two factors as A and B), and HKP
# top rows are one more, dense, kp_kron_s8 (B = [[1]]) that the outermost level points to.

FACTOR_NAMES = "abcdefgh"  # array suffixes of the factors of one matrix (at most kpgen.quant.limits.MAX_FACTORS)
ONE_WORDS = (1, 0)  # pack_blocks([[1]]): the B of a dense kp_kron_s8 (only byte 0 is read)


def matrix_levels(m, biased: bool = False) -> list[dict]:
    """The kp_kron_s8 chain of a KPMatrixQ's Kronecker part, outermost first: per level the packed A (and B
    on the last level) and the dimensions m1, n1, m2, n2 (m2 x n2: the level's inner matrix), t_shift.
    biased: the block layout of Armv6-M cores (pack_blocks)."""
    factors, shifts = m.factors, m.shifts
    levels = []
    for l in range(len(factors) - 1):
        rest = factors[l + 1 :]
        m2 = int(np.prod([f.shape[0] for f in rest]))
        n2 = int(np.prod([f.shape[1] for f in rest]))
        last = l == len(factors) - 2
        if last:
            pa, pb = pack_kron(factors[l], factors[l + 1], biased)
        else:
            pa, pb = (pack_blocks(factors[l], biased) if a_in_blocks(m2) else pack_rows(factors[l])), None
        m1, n1 = factors[l].shape
        levels.append({"a": pa, "b": pb, "m1": int(m1), "n1": int(n1), "m2": m2, "n2": n2, "t_shift": int(shifts[l])})
    return levels


def matrix_scratch_words(m) -> int:
    """int32 words of scratch kp_matvec_s8 needs for a whole KPMatrixQ (kp_matvec_s8_get_buffer_size in C).

    Two factors: kron_scratch_words. More: the T^T of every level but the last (m2 rows of cols_padded(n1)
    int16), one int32 result of the largest such m2, then the larger of the last level's kron scratch and one
    widened row of any level's A. HKP top rows run first, in their own dense scratch (the same words); spread over
    row blocks (top_groups > 1), their r results are kept in the scratch while the blocks move."""
    levels = matrix_levels(m)
    last = levels[-1]
    words = kron_scratch_words(last["m1"], last["n1"], last["m2"], last["n2"])
    if len(levels) > 1:
        outer = levels[:-1]
        tts = sum(lv["m2"] * cols_padded(lv["n1"]) // 2 for lv in outer)
        res = max(lv["m2"] for lv in outer)
        work = max([words] + [cols_padded(lv["n1"]) // 2 for lv in outer])
        words = tts + res + work
    if m.top is not None:
        words = max(words, kron_scratch_words(m.top_rows, m.kp_shape[1], 1, 1))
        if m.top_groups > 1:  # kp_hkp_spread_s32 keeps the top rows' results while it moves the blocks
            words = max(words, m.top_rows)
    return int(words)


def specialised(m) -> bool:
    """Whether the emitter gives a KPMatrixQ its own shape-specialised kernel (kp_kron2_fixed with constant
    bounds): every two-factor matrix without HKP top rows; longer chains and top rows take the generic stages."""
    return len(m.factors) == 2 and m.top is None


def _c_words(words: np.ndarray, per_line: int = 8, indent: str = "    ") -> str:
    """C initialiser lines of int32 words (the emitter's style: 8 a line, indented)."""
    flat = [str(int(v)) for v in np.asarray(words).reshape(-1)] or ["0"]
    return ",\n".join(indent + ", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line))


def matrix_context(m, biased: bool = False, b16: bool = False) -> dict:
    """Everything templates/kp_matrix.j2 needs to emit one KPMatrixQ: its arrays (C initialiser text and word
    counts), the kp_kron_s8 chain (outermost first; `name` is the array suffix of each level's A, `b` that of
    the last level's B), the HKP top rows and shift, shapes, weight counts and the scratch it needs.
    biased: packed for Armv6-M cores (pack_blocks; the C checks KP_BIASED_BLOCKS against it). b16: a specialised
    matrix's B in int16 (pack_blocks16, for DSP cores without Helium: b16_for) where B has more than 2 columns."""
    factors = m.factors
    levels = matrix_levels(m, biased)
    use16 = b16 and specialised(m) and m.b.shape != (1, 1) and cols_padded(m.b.shape[1]) > 2
    arrays, chain = [], []
    for l, lv in enumerate(levels):
        f = factors[l]
        arrays.append({"name": FACTOR_NAMES[l], "words": int(lv["a"].size), "text": _c_words(lv["a"]),
                       "shape": tuple(int(v) for v in f.shape),
                       "layout": "4-row blocks" if a_in_blocks(lv["m2"]) else "rows"})  # fmt: skip
        entry = {k: lv[k] for k in ("m1", "n1", "m2", "n2", "t_shift")}
        entry.update({"a": FACTOR_NAMES[l], "b": None, "inner": l + 1 < len(levels)})
        if lv["b"] is not None:
            fb = factors[l + 1]
            arrays.append({"name": FACTOR_NAMES[l + 1], "words": int(lv["b"].size), "text": _c_words(lv["b"]),
                           "shape": tuple(int(v) for v in fb.shape), "layout": "4-row blocks"})  # fmt: skip
            if use16:  # the DSP build of the specialised kernel reads B in int16 (pack_blocks16) instead
                b16w = pack_blocks16(fb)
                arrays[-1].update({"words16": int(b16w.size), "text16": _c_words(b16w)})
            entry["b"] = FACTOR_NAMES[l + 1]
        entry["b16"] = use16 and l == 0
        chain.append(entry)
    top = None
    if m.top is not None:
        tw = pack_blocks(m.top, biased)
        one = pack_blocks(np.ones((1, 1), np.int8), biased)  # B = [[1]] of the dense top rows
        top = {"rows": m.top_rows, "cols": int(m.top.shape[1]), "words": int(tw.size), "text": _c_words(tw),
               "shift": int(m.top_shift), "one": ", ".join(str(int(v)) for v in one)}  # fmt: skip
    rows, cols = m.kp_shape
    return {
        "arrays": arrays,
        "chain": chain,
        "levels": len(chain),
        "top": top,
        "top_shift": int(m.top_shift) if m.top is not None else 0,
        "top_groups": int(m.top_groups) if m.top is not None else 1,
        "kp_rows": int(rows),
        "kp_cols": int(cols),
        "shape": tuple(int(v) for v in m.shape),
        "factors": len(factors),
        "factor_text": " (x) ".join(f"{FACTOR_NAMES[j].upper()} ({f.shape[0]} x {f.shape[1]})"
                                    for j, f in enumerate(factors)),
        "is_dense": len(factors) == 2 and m.b.shape == (1, 1),
        "weights": int(m.nbytes),
        "dense_weights": int(m.shape[0] * m.shape[1]),
        "scratch_words": matrix_scratch_words(m),
        "fixed": specialised(m),
        "fixed_id": 0,  # the emitter numbers the specialised kernels of a model (kpgen.codegen.emit)
        "biased": biased,
        "b16": use16,
    }
