"""The cell registry: every recurrent cell type kpgen knows, each described once in its own module.

    from kpgen import cells
    cells.get("gru").gates        # 3
    cells.of(layer).golden_step   # the integer step of a float or integer layer's cell

A new cell is one module here (a `Cell`, see kpgen.cells.base), one C kernel pair in runtime_c/ and its tests.
"""

from __future__ import annotations

from kpgen import KpgenError
from kpgen.cells import fastgrnn, fastrnn, gru, lstm, rnn
from kpgen.cells.base import Cell, CField

__all__ = ["GATES", "NAMES", "REGISTRY", "CField", "Cell", "find", "get", "of"]

REGISTRY: dict[str, Cell] = {c.name: c for c in (lstm.CELL, gru.CELL, fastrnn.CELL, fastgrnn.CELL, rnn.CELL,
                                                  rnn.RELU_CELL)}
NAMES: tuple[str, ...] = tuple(REGISTRY)  # the cell names: --cell choices, checkpoint arch.cell values
GATES: dict[str, int] = {n: c.gates for n, c in REGISTRY.items()}  # row blocks of H in Wx and Wh, by cell

_BY_TYPE: dict[type, Cell] = {t: c for c in REGISTRY.values() for t in (c.float_type, c.int_type)}


def get(name: str) -> Cell:
    """The cell called `name`; KpgenError naming the known cells if there is none."""
    cell = REGISTRY.get(name)
    if cell is None:
        raise KpgenError(f"unknown cell {name!r}; use one of {', '.join(NAMES)}")
    return cell


def find(layer: object) -> Cell | None:
    """The cell of a float or integer layer (the forward direction's for a bidirectional one), or None."""
    return _BY_TYPE.get(type(getattr(layer, "fwd", layer)))


def of(layer: object) -> Cell:
    """The cell of a float or integer layer (the forward direction's for a bidirectional one)."""
    cell = find(layer)
    if cell is None:
        inner = getattr(layer, "fwd", layer)
        raise KpgenError(f"{type(inner).__name__} is not a layer of any kpgen cell; "
                         f"build layers of one of the cells {', '.join(NAMES)}")
    return cell
