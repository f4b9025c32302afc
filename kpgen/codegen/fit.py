"""Will the model fit the board? A lower-bound estimate of flash and RAM, checked before anything is built.

The exact check is the linker's (templates/link.ld.j2's MEMORY regions and ASSERT); this one refuses early a
model that cannot fit, with the numbers, and never refuses one that could. The code sizes below are measured
from kpgen's own builds with arm-none-eabi-gcc 12 -O2 (tests/test_shipping.py keeps them honest).
"""

from __future__ import annotations

from dataclasses import dataclass

from kpgen import KpgenError
from kpgen.ir import ModelQ
from kpgen.reference import golden
from kpgen.target.boards import Board

# Activation tables: sigmoid and tanh, golden.TABLE_SIZE int16 each.
TABLE_BYTES = 2 * golden.TABLE_SIZE * 2  # sigmoid and tanh, int16
# One kp_lstm_params_s8 record per layer (pointers and shapes), generously.
LAYER_RECORD_BYTES = 96
# Code, lower bounds: the kernels and model functions (library), and the test firmware's additions
# (main, start-up, newlib-nano printf and the console: semihosting or the UART).
CODE_LIB_BYTES = 1024
CODE_FIRMWARE_BYTES = 8 * 1024
# RAM newlib-nano and the start-up keep in .data/.bss besides the reserved heap and stack (the UART console,
# without rdimon's file handles, measured 244 bytes on m4).
RAM_FIRMWARE_STATIC_BYTES = 128


@dataclass(frozen=True)
class Estimate:
    board: Board
    target: str
    model_flash: int  # weights, biases, head, tables, layer records
    vector_flash: int  # the test firmware's embedded inputs and expected results
    code_flash: int  # lower bound for code
    arena: int  # the model's state and scratch
    reserved_ram: int  # stack + heap + libc statics (firmware) or 0 (library)

    @property
    def flash(self) -> int:
        return self.model_flash + self.vector_flash + self.code_flash

    @property
    def ram(self) -> int:
        return self.arena + self.reserved_ram

    @property
    def flash_available(self) -> int:
        return self.board.flash_size - self.board.boot2_size


def model_flash_bytes(model: ModelQ) -> int:
    """Bytes of constant model data: KP factors, biases, head, activation tables, layer records."""
    tables = int(model.sigmoid_table.nbytes + model.tanh_table.nbytes)  # TABLE_BYTES, or less when interpolated
    return model.weight_bytes + tables + LAYER_RECORD_BYTES * len(model.layers)


def estimate(model: ModelQ, board: Board, target: str, vector_samples: int = 0, steps: int = 0,
             max_steps: int | None = None) -> Estimate:
    """max_steps: the bidirectional bound given with `kpgen emit --max-steps` (None: from steps and the model)."""
    from kpgen.codegen.emit import arena_bytes

    if target == "firmware":
        per_sample = steps * model.input_size + 4 * model.num_classes + 4 * steps
        vector_flash = vector_samples * per_sample
        code = CODE_LIB_BYTES + CODE_FIRMWARE_BYTES
        reserved = board.stack_size + board.heap_size + RAM_FIRMWARE_STATIC_BYTES
    else:
        vector_flash, code, reserved = 0, CODE_LIB_BYTES, 0
    arena = arena_bytes(model, steps) if max_steps is None else arena_bytes(model, max_steps, exact=True)
    return Estimate(board, target, model_flash_bytes(model), vector_flash, code, arena, reserved)


def check_fits(e: Estimate) -> None:
    """Raise KpgenError, with the numbers, when the estimate exceeds the board's flash or RAM."""
    b = e.board
    problems = []
    if e.flash > e.flash_available:
        parts = f"model data {e.model_flash:,}"
        if e.vector_flash:
            parts += f" + test vectors {e.vector_flash:,}"
        parts += f" + code at least {e.code_flash:,}"
        problems.append(f"flash needs at least {e.flash:,} bytes ({parts}) but {b.name} has {e.flash_available:,}")
    if e.ram > b.ram_size:
        parts = f"arena {e.arena:,}"
        if e.reserved_ram:
            parts += f" + stack {b.stack_size:,} + heap {b.heap_size:,} + libc {RAM_FIRMWARE_STATIC_BYTES}"
        problems.append(f"RAM needs at least {e.ram:,} bytes ({parts}) but {b.name} has {b.ram_size:,}")
    if problems:
        hint = "fewer --samples, " if e.vector_flash and e.flash > e.flash_available else ""
        seqs = (" or shorter sequences (a bidirectional model's arena holds whole sequences: meta.seq_len, the "
                "steps of --vectors)") if e.ram > b.ram_size else ""
        raise KpgenError(
            f"the model does not fit board {b.name}: {'; '.join(problems)}; "
            f"use {hint}smaller Kronecker factors or fewer hidden units{seqs}, or a board with more memory"
        )
