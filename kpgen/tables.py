"""The one way kpgen prints a table: aligned plain-text tables for the terminal, markdown tables for docs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _align(cell: str, width: int, how: str) -> str:
    return cell.rjust(width) if how == "r" else cell.ljust(width)


def text_table(
    rows: Iterable[Sequence[object]],
    header: Sequence[object] | None = None,
    *,
    align: str = "",
    header_align: str | None = None,
    min_widths: Sequence[int] = (),
    indent: str = "",
    gap: str = "  ",
) -> list[str]:
    """Lines of a plain-text table: each column as wide as its widest cell (at least min_widths[i]), cells
    aligned by align[i] ('l' or 'r'; left where not given), the header by header_align (default: align),
    columns joined by gap, every line prefixed by indent, trailing spaces stripped."""
    body = [[str(c) for c in r] for r in rows]
    head = None if header is None else [str(c) for c in header]
    every = ([head] if head is not None else []) + body
    ncols = max((len(r) for r in every), default=0)
    widths = [max([len(r[i]) for r in every if i < len(r)] + [min_widths[i] if i < len(min_widths) else 0])
              for i in range(ncols)]  # fmt: skip

    def line(cells: list[str], how: str) -> str:
        parts = [_align(c, widths[i], how[i] if i < len(how) else "l") for i, c in enumerate(cells)]
        return (indent + gap.join(parts)).rstrip()

    out = [] if head is None else [line(head, align if header_align is None else header_align)]
    return out + [line(r, align) for r in body]


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """Lines of a GitHub markdown table: the header, the rule ('---' per column, '---:' where align[i] is
    'r'), then one line per row. Cells are written as given (no padding, no escaping); an empty cell is "| |"."""

    def line(cells: Sequence[object]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    rule = "|" + "".join("---:|" if i < len(align) and align[i] == "r" else "---|" for i in range(len(header)))
    return [line(header), rule] + [line(r) for r in rows]
