"""docs/errors.md stays complete and true: every error message raised in kpgen/ has a row whose message text
contains the message's fixed words; every row's message still exists in the module it names; every row names
a test that exists (file, function, and parameter id)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
RAISERS = {"KpgenError", "fail", "require", "_fail"}  # KpgenError(msg), chk.fail(problem, fix), ...
TEST_REF = re.compile(r"^(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?$")


def rows() -> list[dict[str, str]]:
    """The table rows of docs/errors.md: message (inside `` ``), trigger, fix, where, test."""
    out = []
    for n, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("| ``"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 5, f"docs/errors.md:{n}: expected 5 cells, got {len(cells)}"
        msg = cells[0]
        assert msg.startswith("``") and msg.endswith("``"), f"docs/errors.md:{n}: message not in `` ``"
        out.append({"line": str(n), "message": msg[2:-2].strip().replace("\\|", "|"), "where": cells[3],
                    "test": cells[4]})  # fmt: skip
    return out


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" (or f-string) assignments, as text with {} placeholders."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            parts = _pieces(node.value, {})
            if parts:
                out[node.targets[0].id] = "\0".join(parts)
    return out


def _pieces(node: ast.AST, consts: dict[str, str]) -> list[str]:
    """The fixed text of a message expression, split where run-time values go in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        out, cur = [], ""
        for v in node.values:
            if isinstance(v, ast.Constant):
                cur += v.value
            else:
                out.append(cur)
                cur = ""
                if isinstance(v.value, ast.Name) and v.value.id in consts:
                    out += consts[v.value.id].split("\0")
        return out + [cur]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _pieces(node.left, consts) + _pieces(node.right, consts)
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id].split("\0")
    return []


def raise_sites() -> list[tuple[str, int, list[str]]]:
    """(module, line, fixed pieces of 4+ characters) for every error message kpgen/ raises."""
    sites = []
    for path in sorted((REPO / "kpgen").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        consts = _constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name not in RAISERS:
                continue
            args = node.args[1:] if name == "require" else node.args
            pieces = [p.strip() for a in args for p in _pieces(a, consts)]
            pieces = [p for p in pieces if len(p) >= 4]
            if pieces:  # messages only forwarded (str(e), a variable) have nothing of their own to document
                sites.append((str(path.relative_to(REPO)), node.lineno, pieces))
    return sites


def test_the_table_is_there() -> None:
    rs = rows()
    assert len(rs) >= 100, len(rs)
    assert all(r["where"].startswith("kpgen/") for r in rs)


def test_every_raised_message_is_documented() -> None:
    table = rows()
    missing = []
    for module, line, pieces in raise_sites():
        candidates = [r for r in table if r["where"] == module]
        if not any(all(p in r["message"] for p in pieces) for r in candidates):
            missing.append(f"{module}:{line}: {' ... '.join(pieces)}")
    assert not missing, ("add these messages to docs/errors.md (with the test that triggers them):\n"
                         + "\n".join(missing))


def test_every_documented_message_still_exists() -> None:
    stale = []
    for r in rows():
        source = (REPO / r["where"]).read_text(encoding="utf-8")
        chunks = [c.strip(" :.") for c in re.split(r"<[^<>]*>|;", r["message"])]  # problem and fix are apart in code
        if not any(len(c) >= 6 and c in source for c in chunks):
            stale.append(f"docs/errors.md:{r['line']}: {r['message'][:80]} (not in {r['where']})")
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("row", rows(), ids=lambda r: f"line{r['line']}")
def test_every_row_names_a_test_that_exists(row: dict[str, str], request: pytest.FixtureRequest) -> None:
    """The file, the function and the parameter id exist; when this run collected that file (the whole suite),
    the exact pytest node id must be among the collected tests."""
    m = TEST_REF.match(row["test"])
    assert m, f"docs/errors.md:{row['line']}: test column {row['test']!r} is not tests/<file>.py::<test>[<id>]"
    path, func, param = m.groups()
    assert (REPO / path).is_file(), f"docs/errors.md:{row['line']}: {path} does not exist"
    text = (REPO / path).read_text(encoding="utf-8")
    assert re.search(rf"^def {func}\(", text, re.M), f"docs/errors.md:{row['line']}: no {func} in {path}"
    if param:
        assert param in text, f"docs/errors.md:{row['line']}: {func} has no parameter id {param!r}"
    collected = {item.nodeid for item in request.session.items}
    if any(n.startswith(f"{path}::{func}") for n in collected):  # that test is part of this run (not -k'ed out)
        want = row["test"]
        ok = want in collected if param else any(n == want or n.startswith(want + "[") for n in collected)
        assert ok, f"docs/errors.md:{row['line']}: pytest collected no test {want}"
