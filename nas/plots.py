"""``pareto.png``: every feasible trial, the infeasible ones, and the front, per objective pair."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.front import Front


def plot_front(front: Front, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(front.directions)
    pairs = [
        (b, a)
        if front.directions[a] == "maximize" and front.directions[b] == "minimize"
        else (a, b)
        for a, b in combinations(names, 2)
    ] or [(names[0], names[0])]  # costs on x, quality on y, as NAS papers draw fronts
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
        costs = ("flops", "params", "size_bytes")
        if xn in costs and pts and min(xy(pts)[0]) > 0:
            ax.set_xscale("log")
        if yn in costs and pts and min(xy(pts)[1]) > 0:
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
