"""Files kpgen ships beside its code: templates/, runtime_c/ and boards/.

They stay at the top of the repository; the entries in this folder are symbolic links to them, so an editable
install reads the checkout's own files, and a wheel (pyproject.toml package-data) carries copies.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SHIPPED = ("templates", "runtime_c", "boards")


def data_dir(name: str) -> Path:
    """The shipped folder `name` (one of SHIPPED) as a file-system path: the compiler and jinja2 need real files."""
    if name not in SHIPPED:
        raise ValueError(f"data_dir: {name!r} is not one of {SHIPPED}")
    return Path(str(files(__package__) / name))
