"""Markdown pieces the benchmark scripts share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def states(counts: Mapping[str, int]) -> str:
    """Trials by state, e.g. ``COMPLETE 6, FAIL 1``."""
    return ", ".join(f"{k} {v}" for k, v in counts.items())
