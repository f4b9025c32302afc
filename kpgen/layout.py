"""Flash layouts the C kernels read: int8 matrices packed into int32 words.

The values are the integer IR's, only their order changes (docs/quantization.md, "Weight layout"): the
kernels then load whole 32-bit words, four int8 weights each, in the order the Cortex-M DSP instructions
(SXTB16/SMLAD) and the Helium ones (VLDRB/VMLADAV) consume them. Nothing here changes a single bit of
arithmetic. Words hold their bytes little-endian: byte k of a word is bits 8k..8k+7.

Two layouts (`pack_kron` picks them, and runtime_c/kp_matvec_s8.c follows the same rule):
  blocks  4-row blocks (`pack_blocks`), for every B and for A when m2 == 1 (every dense matrix included): the
          kernel runs down the rows, four accumulators sharing each load of the vector (a row of X, or T);
  rows    row by row (`pack_rows`), for A when m2 > 1: the kernel widens one row of A once and takes its dot
          product with the m2 rows of T^T.
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


def unpack_rows(words: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The inverse of pack_rows (for tests)."""
    raw = np.frombuffer(np.asarray(words, dtype="<i4").tobytes(), dtype=np.int8)
    cp = cols_padded(cols)
    if cp == 2:
        return raw.reshape(-1, 2, 2).transpose(0, 2, 1).reshape(-1, 2)[:rows, :cols].copy()
    return raw.reshape(rows, cp)[:, :cols].copy()


def a_in_blocks(m2: int) -> bool:
    """Whether a Kronecker product's A is packed in blocks (m2 == 1, dense included) or in rows."""
    return m2 == 1


def pack_kron(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both factors of W = A (x) B as kp_matvec_s8 reads them: (A words, B words)."""
    pa = pack_blocks(a) if a_in_blocks(np.asarray(b).shape[0]) else pack_rows(a)
    return pa, pack_blocks(b)


def pack_blocks(w: np.ndarray) -> np.ndarray:
    """int8 matrix (rows x cols) -> int32 words in the block layout of the matrix kernels.

    Block b holds rows 4b..4b+3. With 2 padded columns a block is two words,
    [r0c0 r1c0 r0c1 r1c1] [r2c0 r3c0 r2c1 r3c1]: SXTB16 of a word gives one row's (c0, c1) pair, the same word
    rotated by 8 gives the next row's. Otherwise the block is a run of chunks of 8 columns (the last one 4 when
    the padded width is 4 mod 8), and a chunk holds each of the 4 rows' columns contiguously, row 0 first;
    then, for a width of 4 mod 8, one zero word that the Helium kernel may read past the last row.
    """
    w = _check_int8(w, "pack_blocks")
    rows, cols = w.shape
    rp, cp = rows_padded(rows), cols_padded(cols)
    full = np.zeros((rp, cp), np.int8)
    full[:rows, :cols] = w
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


def unpack_blocks(words: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The inverse of pack_blocks (for tests)."""
    rp, cp = rows_padded(rows), cols_padded(cols)
    raw = np.frombuffer(np.asarray(words, dtype="<i4").tobytes(), dtype=np.int8)
    if cp > 2 and cp % CHUNK_COLS == 4:
        raw = raw[:-4]
    if raw.size != rp * cp:
        raise ValueError(f"unpack_blocks: {raw.size} bytes for a {rp} x {cp} padded matrix")
    nb = rp // BLOCK_ROWS
    if cp == 2:
        blocks = raw.reshape(nb, 2, 2, 2).transpose(0, 1, 3, 2).reshape(nb, BLOCK_ROWS, 2)
    else:
        per_block = raw.reshape(nb, BLOCK_ROWS * cp)
        chunks, off = [], 0
        for c0 in range(0, cp, CHUNK_COLS):
            width = min(CHUNK_COLS, cp - c0)
            chunks.append(per_block[:, off : off + BLOCK_ROWS * width].reshape(nb, BLOCK_ROWS, width))
            off += BLOCK_ROWS * width
        blocks = np.concatenate(chunks, axis=2)
    return blocks.reshape(rp, cp)[:rows, :cols].copy()


def kron_scratch_words(m1: int, n1: int, m2: int, n2: int) -> int:
    """int32 words of scratch kp_matvec_s8 needs for W = A (m1 x n1) (x) B (m2 x n2).

    A dense matrix (B 1x1): the widened input, cols_padded(n1) int16. A Kronecker product: T^T (m2 rows of
    cols_padded(n1) int16), then one widened row of X (cols_padded(n2) int16) or of A (cols_padded(n1)).
    """
    p1, p2 = cols_padded(n1), cols_padded(n2)
    if m2 == 1 and n2 == 1:
        return p1 // 2
    return (m2 * p1 + max(p1, p2)) // 2
