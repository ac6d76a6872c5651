"""``pareto.png``: every feasible trial, the infeasible ones, and the front, per objective pair."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.front import Front


LOG_SCALE = ("flops", "params", "size_bytes")  # costs that span decades


def objective_pairs(directions: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every pair of objectives as (x, y), a cost on x and the quality on y as NAS papers draw."""
    names = list(directions)
    return [
        (b, a) if directions[a] == "maximize" and directions[b] == "minimize" else (a, b)
        for a, b in combinations(names, 2)
    ] or [(names[0], names[0])]


def use_log(name: str, values: Sequence[float]) -> bool:
    return name in LOG_SCALE and bool(values) and min(values) > 0


def plot_front(front: Front, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(front.directions)
    pairs = objective_pairs(front.directions)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    on_front = {p.number for p in front.points}
    for ax, (xn, yn) in zip(axes[0], pairs, strict=True):

        def xy(points, xn=xn, yn=yn):
            return [p.metrics[xn] for p in points], [p.metrics[yn] for p in points]

        others = [p for p in front.candidates if p.number not in on_front]
        ax.scatter(*xy(others), s=18, c="#9aa5b1", label=f"feasible ({len(others)})")
        if front.infeasible:
            ax.scatter(
                *xy(front.infeasible),
                s=22,
                marker="x",
                c="#d9822b",
                label=f"infeasible ({len(front.infeasible)})",
            )
        pts = sorted(front.points, key=lambda p: p.metrics[xn])
        # a 2-objective front is a curve; with more objectives its projection is only points
        style = "-o" if len(names) == 2 else "o"
        ax.plot(*xy(pts), style, c="#1f6feb", ms=6, lw=1.2, label=f"front ({len(pts)})")
        for p in pts:
            ax.annotate(
                f"#{p.number}",
                (p.metrics[xn], p.metrics[yn]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        if use_log(xn, xy(pts)[0]):
            ax.set_xscale("log")
        if use_log(yn, xy(pts)[1]):
            ax.set_yscale("log")
        ax.set_xlabel(f"{xn} ({front.directions[xn]})")
        ax.set_ylabel(f"{yn} ({front.directions[yn]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"Pareto front, hypervolume {front.hypervolume:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fronts(
    fronts: Mapping[str, Front],
    directions: Mapping[str, str],
    path: Path,
    rows: Sequence[Mapping[str, float]],
) -> Path:
    """``nas compare --to x.png``: the fronts of several runs on one plot per objective pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = objective_pairs(directions)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    hv = {r["run"]: r["hypervolume"] for r in rows}
    every = [p for f in fronts.values() for p in f.points]
    for ax, (xn, yn) in zip(axes[0], pairs, strict=True):
        for (name, f), marker in zip(fronts.items(), "osD^v<>", strict=False):
            pts = sorted(f.points, key=lambda p: p.metrics[xn])
            ax.plot(
                [p.metrics[xn] for p in pts],
                [p.metrics[yn] for p in pts],
                "-" + marker if len(directions) == 2 else marker,
                ms=5,
                lw=1.2,
                label=f"{name} (HV {hv[name]:.3f})",
            )
        if use_log(xn, [p.metrics[xn] for p in every]):
            ax.set_xscale("log")
        if use_log(yn, [p.metrics[yn] for p in every]):
            ax.set_yscale("log")
        ax.set_xlabel(f"{xn} ({directions[xn]})")
        ax.set_ylabel(f"{yn} ({directions[yn]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Pareto fronts; hypervolumes under one reference point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
