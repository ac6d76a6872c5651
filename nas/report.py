"""Plain-text tables of fronts and exports (readable in a terminal and in CI logs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.front import Front

_ORDER = ("accuracy", "test_accuracy", "flops", "params", "size_bytes", "latency_ms")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e4:
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.4g}"
    return str(v)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def metric_columns(
    directions: Mapping[str, str], metrics: Sequence[Mapping[str, Any]]
) -> list[str]:
    names = list(directions)
    extra = sorted(
        {k for m in metrics for k in m} - set(names),
        key=lambda k: (_ORDER.index(k) if k in _ORDER else 99, k),
    )
    return names + extra


def front_table(front: Front) -> str:
    knee = front.knee().number if front.points else None
    rows = [
        {"trial": f"{p.number}{' (knee)' if p.number == knee else ''}", **p.metrics}
        for p in front.points
    ]
    cols = ["trial", *metric_columns(front.directions, [p.metrics for p in front.points])]
    head = (
        f"{len(front.points)} model(s) on the front of {len(front.candidates)} feasible "
        f"trial(s); hypervolume {front.hypervolume:.4f}"
    )
    return head + "\n" + table(rows, cols)
