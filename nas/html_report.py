"""``nas report`` and ``nas compare``: one self-contained HTML file (opens offline).

Everything is inline: the plots are SVG drawn here (no plotting library, no CDN), the styles and a
small script (tooltips, linked highlighting, legend toggles, sortable tables) are embedded, so the
file is small and renders in any browser without a network. The report holds:

- a Pareto plot per pair of objectives: front, dominated feasible and infeasible trials apart;
- the front table with why each model is on the front;
- the hypervolume after each trial (under the final front's reference and ideal points);
- parameter importances per objective (Optuna's default evaluator, PED-ANOVA);
- how often each compression technique and knob value appears on the front vs in all trials.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import optuna

from nas.errors import NasError
from nas.front import Front, hypervolume, nondominated
from nas.plots import objective_pairs, use_log
from nas.report import describe_compression, fmt, metric_columns
from nas.search._problem import Point
from nas.svg import Plot

if TYPE_CHECKING:
    from nas.runs import Run

FRONT, DOMINATED, INFEASIBLE, KNEE = "#1f6feb", "#9aa5b1", "#d9822b", "#cf222e"
RUN_COLORS = ("#1f6feb", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#57606a")
TOP_PARAMS = 12


def write_report(run: Run, to: str | Path | None = None) -> Path:
    """Write the run's report (default ``RUN_DIR/report.html``); return its path."""
    path = Path(to) if to is not None else run.dir / "report.html"
    if path.is_dir():
        raise NasError(
            f"--to {path} is a folder; pass the HTML file to write, e.g. {path}/report.html"
        )
    if path.suffix.lower() not in (".html", ".htm"):
        raise NasError(f"--to {path}: the report is one HTML file; give a name ending in .html")
    if path.parent and not path.parent.is_dir():
        raise NasError(f"--to {path}: folder {path.parent} does not exist; create it first")
    html = build_report(run)
    path.write_text(html, encoding="utf-8")
    return path


def build_report(run: Run) -> str:
    from nas.search._worker import counts

    study = run.study()
    front = run.front().front  # says so when the run has no completed / feasible trial
    c = counts(study)
    knee = front.knee().number
    why = front.reasons()
    title = run.exp.name or run.dir.name
    trials = _trial_data(front, why, knee)
    summary = [
        ("data", f"{run.exp.data.name}"),
        ("space", f"{run.exp.space.name}"),
        ("objectives", ", ".join(f"{n} ({d})" for n, d in front.directions.items())),
        (
            "trials",
            f"{c.complete} completed ({len(front.candidates)} feasible, "
            f"{len(front.infeasible)} infeasible), {c.rejected} rejected before training, "
            f"{c.stopped} stopped early, {c.failed} failed, {c.running} running",
        ),
        (
            "front",
            f"{len(front.points)} models, hypervolume {front.hypervolume:.4f}, knee #{knee}",
        ),
        *hardware_summary(study),
    ]
    sections = [
        _section(
            "Pareto front",
            "Hover a point for its metrics and params (the same trial lights up in every plot); "
            "click a legend entry to hide that group.",
            '<div class="plots">' + "".join(_pareto_plots(front, knee)) + "</div>",
        ),
        _section("Models on the front", "", _front_table(front, why, knee)),
        *_finalized_section(run, front),
        _section(
            "Hypervolume over trials",
            "Hypervolume of the feasible front after each completed trial, under the final "
            "front's reference and ideal points (1 would be the whole box).",
            _hv_history(front),
        ),
        _section(
            "Parameter importance",
            "Which params matter for reaching good values of each objective, over the "
            "completed trials (Optuna's default evaluator, PED-ANOVA).",
            _importances(study, front.directions),
        ),
        *_sensitivity_section(run, front),
        _section(
            "Compression on the front",
            "How often each technique is applied in the front models vs in all feasible trials, "
            "and the knob values they use.",
            _technique_table(front),
        ),
    ]
    return _page(
        f"{title}: search report",
        f"<h1>{escape(title)}</h1>"
        + (f"<p>{escape(run.exp.description)}</p>" if run.exp.description else "")
        + _summary(summary, run.dir),
        sections,
        trials,
    )


def hardware_summary(study: optuna.Study) -> list[tuple[str, str]]:
    """Where the trials trained (device, precision) and where hardware metrics were measured."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    devices = Counter(
        f"{t.user_attrs['device']}, {t.user_attrs.get('precision', 'fp32')}"
        for t in done
        if "device" in t.user_attrs
    )
    where = Counter(
        f"{name}: {how}" for t in done for name, how in t.user_attrs.get("measured_on", {}).items()
    )
    out = []
    if devices:
        out.append(("trained on", "; ".join(f"{d} ({n} trials)" for d, n in devices.items())))
    if where:
        out.append(("measured on", "; ".join(f"{w} ({n} trials)" for w, n in where.items())))
    return out


def _point_data(p: Point) -> dict[str, Any]:
    return {
        "number": p.number,
        "metrics": {k: fmt(v) for k, v in p.metrics.items()},
        "params": {k: fmt(v) for k, v in p.params.items()},
        "compression": describe_compression(p.compression),
    }


def _trial_data(front: Front, why: Mapping[int, str], knee: int) -> dict[str, Any]:
    on_front = {p.number for p in front.points}
    data: dict[str, Any] = {}
    for kind, pts in (("feasible", front.candidates), ("infeasible", front.infeasible)):
        for p in pts:
            status = kind
            if p.number in on_front:
                status = "on the front" + (" (knee)" if p.number == knee else "")
            elif kind == "feasible":
                status = "dominated"
            data[str(p.number)] = {**_point_data(p), "status": status, "why": why.get(p.number)}
    return data


def _pareto_plots(front: Front, knee: int) -> list[str]:
    on_front = {p.number for p in front.points}
    dominated = [p for p in front.candidates if p.number not in on_front]
    every = front.candidates + front.infeasible
    out = []
    for xn, yn in objective_pairs(front.directions):
        plot = Plot(
            f"{yn} vs {xn}",
            f"{xn} ({front.directions[xn]})",
            f"{yn} ({front.directions[yn]})",
            xlog=use_log(xn, [p.metrics[xn] for p in every]),
            ylog=use_log(yn, [p.metrics[yn] for p in every]),
        )
        groups = [
            ("dominated", dominated, DOMINATED, "circle", 3.5),
            ("infeasible", front.infeasible, INFEASIBLE, "cross", 3.5),
        ]
        for label, pts, color, marker, size in groups:
            if pts:
                plot.add(
                    label,
                    [p.metrics[xn] for p in pts],
                    [p.metrics[yn] for p in pts],
                    color=color,
                    marker=marker,
                    size=size,
                    trials=[p.number for p in pts],
                )
        pts = sorted(front.points, key=lambda p: p.metrics[xn])
        plot.add(
            "front",
            [p.metrics[xn] for p in pts],
            [p.metrics[yn] for p in pts],
            color=FRONT,
            # two objectives: the front is a curve; more: its projection is only points
            kind="line" if len(front.directions) == 2 else "scatter",
            size=5,
            trials=[p.number for p in pts],
        )
        k = next(p for p in pts if p.number == knee)
        plot.add(
            "knee",
            [k.metrics[xn]],
            [k.metrics[yn]],
            color=KNEE,
            marker="diamond",
            size=5,
            trials=[knee],
        )
        out.append(plot.svg())
    return out


def _front_table(front: Front, why: Mapping[int, str], knee: int) -> str:
    cols = metric_columns(front.directions, [p.metrics for p in front.points])
    rows = [
        {
            "trial": f"#{p.number}" + (" knee" if p.number == knee else ""),
            "why on the front": why.get(p.number, ""),
            **{c: fmt(p.metrics.get(c, "")) for c in cols},
            "compression": describe_compression(p.compression),
            "_t": p.number,
        }
        for p in front.points
    ]
    return _table(rows, ["trial", "why on the front", *cols, "compression"])


def _finalized_section(run: Run, front: Front) -> list[str]:
    """Front models retrained by ``nas finalize``: search-time vs final metrics, side by side."""
    from nas.front import final_cost_disagreements
    from nas.report import FINAL, describe_budget
    from nas.run_folder import LATENCY_BATCHES, read_finals

    every = read_finals(run.dir)
    finals = {p.number: every[p.number] for p in front.points if p.number in every}
    if not finals:
        return []
    names = [*front.directions, "test_accuracy"]
    latency = [f"latency_ms_batch{b}" for b in LATENCY_BATCHES]
    costs = final_cost_disagreements(front.points, finals)
    rows = []
    for p in front.points:
        rec = finals.get(p.number)
        if rec is None:
            continue
        m = rec["metrics"]
        rows.append(
            {
                "trial": f"#{p.number}",
                "budget": describe_budget(rec),
                **{n: fmt(p.metrics.get(n, "")) for n in names},
                **{FINAL + n: fmt(m.get(n, "")) for n in [*names, *latency]},
                "costs disagree": costs.get(p.number, ""),
                "_t": p.number,
            }
        )
    cols = ["trial", "budget", *names, *[FINAL + n for n in [*names, *latency]], "costs disagree"]
    return [
        _section(
            "Finalized models",
            "Retrained by `nas finalize` on the whole training split; final metrics measured on "
            "the test split, latency of the deployed model with onnxruntime on 1 thread. "
            "`nas export` exports these weights.",
            _table(rows, cols),
        )
    ]


def hypervolume_history(front: Front) -> tuple[list[int], list[float]]:
    """(trial numbers, hypervolume of the feasible front after each) in trial order."""
    xs: list[int] = []
    ys: list[float] = []
    current: list[Point] = []
    hv = 0.0
    for p in sorted(front.candidates, key=lambda p: p.number):
        grown = nondominated([*current, p], front.directions)
        if any(q.number == p.number for q in grown):
            current = grown
            hv = hypervolume(current, front.directions, front.reference, ideal=front.ideal)
        xs.append(p.number)
        ys.append(hv)
    return xs, ys


def _hv_history(front: Front) -> str:
    xs, ys = hypervolume_history(front)
    plot = Plot(
        "hypervolume after each feasible trial", "trial", "hypervolume", width=620, height=300
    )
    plot.add("hypervolume", xs, ys, color=FRONT, kind="step")
    return plot.svg()


def importances(study: optuna.Study, directions: Mapping[str, str]) -> dict[str, Any]:
    """Per objective: {param: importance} or the reason it could not be computed."""
    out: dict[str, Any] = {}
    for i, (name, d) in enumerate(directions.items()):
        sign = -1.0 if d == "maximize" else 1.0  # the evaluator ranks params for low values
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, s=sign: s * t.values[i]
                )
        except Exception as e:  # too few trials, a single distinct value, ...
            out[name] = f"not computed: {e}"
    return out


def _importances(study: optuna.Study, directions: Mapping[str, str]) -> str:
    blocks = []
    for name, imp in importances(study, directions).items():
        if isinstance(imp, str):
            body = f'<p class="note">{escape(imp)}</p>'
        else:
            top = list(imp.items())[:TOP_PARAMS]
            body = "".join(
                f'<div class="bar"><span class="bar-name">{escape(k)}</span>'
                f'<span class="bar-track"><span class="bar-fill" style="width:'
                f'{100 * v:.1f}%"></span></span><span class="bar-val">{v:.3f}</span></div>'
                for k, v in top
            )
        blocks.append(f'<div class="imp"><h3>{escape(name)}</h3>{body}</div>')
    return '<div class="imps">' + "".join(blocks) + "</div>"


def _sensitivity_section(run: Run, front: Front) -> list[str]:
    """For runs that search bit widths: the knee model's per-layer quantization sensitivity."""
    if "quantize" not in run.exp.compression:
        return []
    from nas.compress.quant_ops import sensitivity
    from nas.run_folder import trial_model

    knee = front.knee()
    val = run.splits.val.head(2000)
    base, table = sensitivity(trial_model(run, knee), val.x, val.y)
    bits = sorted({b for per in table.values() for b in per})
    rows = [
        {"layer": name, **{f"{b} bits": f"{100 * per[b]:+.2f}" for b in bits}}
        for name, per in table.items()
    ]
    return [
        _section(
            f"Quantization sensitivity of the knee model (trial #{knee.number})",
            f"Validation accuracy change (points, from {100 * base:.2f} % in float on up to "
            "2,000 images) when only that layer's weights are rounded to the given bits "
            "(symmetric, per channel): the layers that tolerate few bits are where per-layer "
            "mixed precision (quantize: {per_layer: true}) saves the most.",
            _table(rows, ["layer", *[f"{b} bits" for b in bits]]),
        )
    ]


def technique_stats(front: Front) -> list[dict[str, str]]:
    """One row per technique: share of front models and of feasible trials using it, knobs."""
    on_front = front.points
    every = front.candidates
    names = sorted({t for p in every for t in p.compression})
    rows = []
    for tech in [*names, None]:

        def uses(p: Point, tech: str | None = tech) -> bool:
            return (tech in p.compression) if tech else not p.compression

        f_n = sum(uses(p) for p in on_front)
        a_n = sum(uses(p) for p in every)
        if tech is None and not a_n:
            continue
        knobs = (
            _knob_summary(
                [p.compression[tech] for p in on_front if uses(p)],
                [p.compression[tech] for p in every if uses(p)],
            )
            if tech
            else ""
        )
        rows.append(
            {
                "technique": tech or "(no compression)",
                "front models": f"{f_n}/{len(on_front)} ({100 * f_n / len(on_front):.0f} %)",
                "all feasible": f"{a_n}/{len(every)} ({100 * a_n / max(len(every), 1):.0f} %)",
                "knob values: front (all)": knobs,
            }
        )
    return rows


def _knob_value(v: Any) -> Any:
    if isinstance(v, Mapping):  # per-layer knob: its mean
        vals = [float(x) for x in v.values()]
        return sum(vals) / len(vals) if vals else math.nan
    return v


def _knob_summary(front: Sequence[Mapping[str, Any]], every: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for knob in sorted({k for c in every for k in c}):
        alls = [_knob_value(c[knob]) for c in every if knob in c]
        fr = [_knob_value(c[knob]) for c in front if knob in c]
        if len({repr(v) for v in alls}) <= 1:
            continue  # a fixed setting, not a searched knob
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in alls)
        if numeric and len(set(alls)) > 8:

            def spread(vs: list[float]) -> str:
                if not vs:
                    return "-"
                return f"median {fmt(float(median(vs)))} [{fmt(min(vs))}..{fmt(max(vs))}]"

            parts.append(f"{knob}: {spread(fr)} ({spread(alls)})")
        else:

            def counts(vs: list[Any]) -> str:
                c = Counter(fmt(v) for v in vs)
                return ", ".join(f"{k}×{n}" for k, n in sorted(c.items())) or "-"

            parts.append(f"{knob}: {counts(fr)} ({counts(alls)})")
    return "; ".join(parts)


def _technique_table(front: Front) -> str:
    rows = technique_stats(front)
    if not rows:
        return '<p class="note">The search offered no compression technique.</p>'
    return _table(rows, list(rows[0]))


# ---- page -------------------------------------------------------------------------------------


def _section(title: str, note: str, body: str) -> str:
    n = f'<p class="note">{escape(note)}</p>' if note else ""
    return f"<section><h2>{escape(title)}</h2>{n}{body}</section>"


def _summary(items: Sequence[tuple[str, str]], run_dir: Path) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items)
    rows += (
        f"<tr><th>run folder</th><td>{escape(str(run_dir))}</td></tr>"
        f"<tr><th>written</th><td>{stamp} by nas {_version()}</td></tr>"
    )
    return f'<table class="summary">{rows}</table>'


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nas")
    except PackageNotFoundError:
        return "unknown"


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        (f'<tr data-t="{r["_t"]}">' if "_t" in r else "<tr>")
        + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    return (
        f'<table class="data sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _page(title: str, header: str, sections: Sequence[str], trials: Mapping[str, Any]) -> str:
    data = json.dumps(trials, separators=(",", ":"), allow_nan=False, default=str)
    data = data.replace("</", "<\\/")  # cannot close the script element
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_asset('report.css')}</style></head><body>"
        f"<header>{header}</header><main>{''.join(sections)}</main>"
        '<div id="tip" hidden></div>'
        f'<script type="application/json" id="trials">{data}</script>'
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def _asset(name: str) -> str:
    return (Path(__file__).parent / "assets" / name).read_text(encoding="utf-8")
