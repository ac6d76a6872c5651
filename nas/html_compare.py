"""``nas compare``: the fronts of several runs on one page (or one PNG), each run's hypervolume
under one shared reference point."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.front import Front, default_reference, hypervolume, ideal_point
from nas.html_report import RUN_COLORS, _page, _point_data, _section, _table
from nas.plots import objective_pairs, use_log
from nas.svg import Plot


def compare(run_dirs: Sequence[str | Path], to: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """Fronts of several runs on one plot per objective pair; hypervolumes under one reference.

    Only the objectives every run has (same direction) are compared; each run's front is
    recomputed on them. Returns the written file and one row per run (name, models, hypervolume).
    """
    from nas.runs import Run

    if len(run_dirs) < 2:
        raise NasError("nas compare needs two or more run folders, e.g. runs/a runs/b")
    runs = [Run.open(d) for d in run_dirs]
    common = dict(runs[0].directions)
    for r in runs[1:]:
        common = {n: d for n, d in common.items() if r.directions.get(n) == d}
    if not common:
        raise NasError(
            "the runs share no objective (with the same direction); compare runs whose "
            "experiments name the same objectives"
        )
    fronts = [Front.from_study(r.study(), common) for r in runs]
    for r, f in zip(runs, fronts, strict=True):
        if not f.candidates:
            raise NasError(f"{r.dir} has no completed feasible trial; run or resume it first")
    every = [p for f in fronts for p in f.candidates]
    ref = default_reference(every, common)
    ideal = ideal_point(every, common)
    names = _labels([r.dir for r in runs])
    rows = [
        {
            "run": name,
            "models": len(f.points),
            "feasible": len(f.candidates),
            "hypervolume": hypervolume(f.points, common, ref, ideal=ideal),
        }
        for name, f in zip(names, fronts, strict=True)
    ]
    path = Path(to)
    if path.suffix.lower() == ".png":
        from nas.plots import plot_fronts

        plot_fronts(dict(zip(names, fronts, strict=True)), common, path, rows)
        return path, rows
    if path.suffix.lower() not in (".html", ".htm"):
        raise NasError(f"--to {path}: write .html (interactive) or .png")
    trials: dict[str, Any] = {}
    plots = []
    for xn, yn in objective_pairs(common):
        plot = Plot(f"{yn} vs {xn}", xn, yn)
        for i, (name, f) in enumerate(zip(names, fronts, strict=True)):
            pts = sorted(f.points, key=lambda p: p.metrics[xn])
            keys = [i * 1_000_000 + p.number for p in pts]  # unique across runs
            plot.add(
                name,
                [p.metrics[xn] for p in pts],
                [p.metrics[yn] for p in pts],
                color=RUN_COLORS[i % len(RUN_COLORS)],
                kind="line" if len(common) == 2 else "scatter",
                marker=("circle", "diamond", "square", "cross")[i % 4],
                trials=keys,
            )
            for k, p in zip(keys, pts, strict=True):
                trials[str(k)] = {**_point_data(p), "run": name}
        plot.xlog = use_log(xn, [p.metrics[xn] for p in every])
        plot.ylog = use_log(yn, [p.metrics[yn] for p in every])
        plots.append(plot.svg())
    table_rows = [{**r, "hypervolume": f"{r['hypervolume']:.4f}"} for r in rows]
    body = [
        _section(
            "Fronts",
            f"Objectives compared: {', '.join(f'{n} ({d})' for n, d in common.items())}. "
            "Hypervolumes share one reference point (the worst feasible value of every run, "
            "10 % further) and one ideal point, so they compare.",
            '<div class="plots">'
            + "".join(plots)
            + "</div>"
            + _table(table_rows, ["run", "models", "feasible", "hypervolume"]),
        )
    ]
    html = _page("nas compare: " + ", ".join(names), "<h1>Comparison of runs</h1>", body, trials)
    path.write_text(html, encoding="utf-8")
    return path, rows


def _labels(dirs: Sequence[Path]) -> list[str]:
    names = [d.name or str(d) for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    return names


# ---- sections ---------------------------------------------------------------------------------
