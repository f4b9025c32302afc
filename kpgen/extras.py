"""Optional dependencies: training, the built-in datasets and the studies need packages that `kpgen emit` and
`kpgen run` do not, so they come with pyproject extras and are imported only where used."""

from __future__ import annotations

import importlib
from types import ModuleType

from kpgen import KpgenError


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """`module`, imported now; a one-line KpgenError naming the extra that installs it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise KpgenError(f"{what} needs the '{extra}' extra: pip install 'kpgen[{extra}]'") from None
