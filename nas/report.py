"""Plain-text tables of fronts and exports (readable in a terminal and in CI logs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.front import Front


def describe_budget(rec: Mapping[str, Any]) -> str:
    """``5 epochs from scratch on 60000 examples`` (a ``nas finalize`` record's budget)."""
    return f"{rec['epochs']:g} epochs from {rec['from']} on {rec['train_examples']} examples"


_LEFT = ("run", "compression", "why on the front", "costs disagree")  # text columns
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

    def just(x: str, w: int, c: str) -> str:
        return x.ljust(w) if c in _LEFT else x.rjust(w)

    line = "  ".join(just(c, w, c) for c, w in zip(columns, widths, strict=True)).rstrip()
    body = [
        "  ".join(just(x, w, c) for x, w, c in zip(row, widths, columns, strict=True)).rstrip()
        for row in cells
    ]
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
    """``slimming 0.42, lowrank 0.5, int8`` (per-layer knobs shown as their mean; a sampled
    technique that changed nothing: ``slimming not applied``)."""
    from nas.front import NOT_APPLIED

    parts = []
    for name, knobs in compression.items():
        if isinstance(knobs, Mapping) and NOT_APPLIED in knobs:
            parts.append(f"{name} not applied")
            continue
        main = next(iter(knobs.values()), None) if knobs else None
        if isinstance(main, Mapping):
            main = sum(main.values()) / max(len(main), 1)
        if name == "quantize" and main is not None:
            parts.append("int8" if float(main) == 8 else f"{float(main):g}-bit")
        elif isinstance(main, str):  # e.g. ptq minmax, binarize ternary
            parts.append(f"{name} {main}")
        else:
            parts.append(name if main is None else f"{name} {float(main):.2g}")
    return ", ".join(parts) or "-"


FINAL = "final "  # prefix of a finalized model's metric columns


def front_table(
    front: Front,
    selected: int | None = None,
    finals: Mapping[int, Mapping[str, Any]] | None = None,
) -> str:
    """The front as a table: metrics, compression, and why each model is on the front.

    ``selected`` (a trial number) is marked with ``>``. ``finals`` (trial -> ``nas finalize``
    record) adds ``final <objective>`` columns, and a ``costs disagree`` column flags models whose
    multiply-adds and measured latency tell different stories.
    """
    from nas.front import final_cost_disagreements
    from nas.run_folder import LATENCY_KEY

    finals = {n: r for n, r in (finals or {}).items() if n in {p.number for p in front.points}}
    knee = front.knee().number if front.points else None
    compressed = any(p.compression for p in front.points)
    why = front.reasons()
    final_cols = [FINAL + n for n in [*front.directions, LATENCY_KEY]]
    costs = final_cost_disagreements(front.points, finals)
    rows = [
        {
            "trial": f"{'> ' if p.number == selected else ''}{p.number}"
            f"{' (knee)' if p.number == knee else ''}",
            **p.metrics,
            **{FINAL + k: v for k, v in finals.get(p.number, {}).get("metrics", {}).items()},
            "compression": describe_compression(p.compression),
            "why on the front": why.get(p.number, ""),
            "costs disagree": costs.get(p.number, ""),
        }
        for p in front.points
    ]
    cols = ["trial", *metric_columns(front.directions, [p.metrics for p in front.points])]
    if finals:
        cols += [c for c in final_cols if any(c in r for r in rows)]
    if compressed:
        cols.append("compression")
    cols.append("why on the front")
    if costs:
        cols.append("costs disagree")
    head = (
        f"{len(front.points)} model(s) on the front of {len(front.candidates)} feasible "
        f"trial(s); hypervolume {front.hypervolume:.4f}"
    )
    if finals:
        budgets = sorted({describe_budget(r) for r in finals.values()})
        head += (
            f"\n'{FINAL.strip()} ...' columns: {len(finals)} model(s) finalized by `nas finalize` "
            f"({'; '.join(budgets)}), measured on the test split"
        )
    return head + "\n" + table(rows, cols)
