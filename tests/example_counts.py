"""How many generated examples the property and fuzz tests ran, reported at the end of the pytest run.

Tests call `count(name)` once per example; conftest.py prints the totals in the terminal summary and stores
them in the pytest cache (`.pytest_cache/v/kpgen/example_counts`), so a report can quote them.
"""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()
FINDINGS: dict[str, list[str]] = {}


def count(name: str, n: int = 1) -> None:
    COUNTS[name] += n


def finding(name: str, text: str) -> None:
    """Remember a non-failing observation (e.g. which error kinds a fuzzer reached)."""
    FINDINGS.setdefault(name, []).append(text)
