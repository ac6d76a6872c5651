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


def describe_compression(compression: Mapping[str, Any]) -> str:
    """``slimming 0.42, lowrank 0.5, int8`` (per-layer knobs shown as their mean)."""
    parts = []
    for name, knobs in compression.items():
        main = next(iter(knobs.values()), None) if knobs else None
        if isinstance(main, Mapping):
            main = sum(main.values()) / max(len(main), 1)
        if name == "quantize" and main is not None:
            parts.append("int8" if float(main) == 8 else f"{float(main):g}-bit")
        else:
            parts.append(name if main is None else f"{name} {float(main):.2g}")
    return ", ".join(parts) or "-"


def front_table(front: Front) -> str:
    knee = front.knee().number if front.points else None
    compressed = any(p.compression for p in front.points)
    rows = [
        {
            "trial": f"{p.number}{' (knee)' if p.number == knee else ''}",
            **p.metrics,
            "compression": describe_compression(p.compression),
        }
        for p in front.points
    ]
    cols = ["trial", *metric_columns(front.directions, [p.metrics for p in front.points])]
    if compressed:
        cols.append("compression")
    head = (
        f"{len(front.points)} model(s) on the front of {len(front.candidates)} feasible "
        f"trial(s); hypervolume {front.hypervolume:.4f}"
    )
    return head + "\n" + table(rows, cols)
