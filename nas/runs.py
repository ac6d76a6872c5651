"""A run folder: the frozen experiment, the study, every trial's weights, front.json, pareto.png.

Nothing outside the folder is needed to resume, inspect or export a run.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.compress import parse_compression
from nas.config import Experiment, load_experiment, parse_experiment
from nas.data import load_data
from nas.errors import NasError
from nas.front import Front
from nas.pipeline import ExperimentProblem, preflight, resolve_objectives
from nas.plots import plot_front
from nas.run_folder import EXPERIMENT_FILE, RunFolder, read_experiment
from nas.search import SearchSettings, optimize
from nas.search._journal import check_journal
from nas.search._storage import (
    check_url,
    journal_path,
    open_storage,
    repair_storage,
)

# keys that may change between invocations of the same run (they do not change its results)
_RESUMABLE = {
    "trials",
    "workers",
    "timeout",
    "threads_per_worker",
    "heartbeat_seconds",
    "max_rejections",
    "backend",
    "address",
    "cpus_per_trial",
    "gpus_per_trial",
}


def problem_from_run_dir(run_dir: Path) -> ExperimentProblem:
    """Rebuild the problem of a run from its folder (what each worker process does)."""
    from nas.supernet.search import problem

    return problem(read_experiment(run_dir), run_dir)


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if prefix == "search." and k in _RESUMABLE:
                continue
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


def with_overrides(exp: Experiment, **search: Any) -> Experiment:
    """Apply CLI/API overrides of ``search.*`` (``None`` leaves a key as it is), re-validated."""
    data = exp.to_dict()
    data["search"].update({k: v for k, v in search.items() if v is not None})
    return parse_experiment(data, "overrides")


@dataclass
class Run(RunFolder):
    """A run folder. ``Run.open(dir)`` for an existing one, :func:`nas.run` to search."""

    def front(self, where: str | None = None) -> RunFront:
        """The feasible front (``where`` filters it first); NasError when it is empty."""
        return RunFront(self, self.feasible_front(where))

    def write_front(self) -> RunFront:
        rf = self.front()
        rf.front.write_json(self.dir / "front.json")
        plot_front(
            rf.front,
            self.dir / "pareto.png",
            title=f"{self.exp.name or self.dir.name}: "
            f"{len(rf.front)} models on the front, HV {rf.front.hypervolume:.3f}",
        )
        return rf


@dataclass
class RunFront:
    """A run's front: ``.points``, ``.knee()``, ``.table()``, ``.export(to)``."""

    run: Run
    front: Front

    @property
    def points(self):  # list[Point]
        return self.front.points

    def knee(self):  # Point
        return self.front.knee()

    def best(self, metric: str):  # Point
        """The best model on ``metric`` (e.g. ``"accuracy"``) within this (filtered) front."""
        return self.front.best(metric, metric_direction(metric))

    def select(self, *, best: str | None = None, knee: bool = False):  # Point | None
        """One model by a rule: ``best=METRIC`` or ``knee=True`` (None when neither is given)."""
        if best and knee:
            raise NasError("--best and --knee each select one model; pass only one of them")
        if best:
            return self.best(best)
        return self.knee() if knee else None

    def describe_selection(self, point, *, best: str | None = None) -> str:
        """``trial 42: best accuracy among 12 feasible models with latency_ms <= 1``."""
        where = f" with {self.front.where}" if self.front.where else ""
        n = len(self.front.candidates)
        if best:
            return (
                f"trial {point.number}: best {best} ({point.metrics[best]:.6g}) among {n} "
                f"feasible model(s){where}"
            )
        return (
            f"trial {point.number}: the knee of the front{where} (closest to the ideal point "
            f"once each objective is scaled to [0, 1])"
        )

    def table(self) -> str:
        from nas.report import front_table

        return front_table(self.front, finals=self.finals())

    def finals(self) -> dict[int, dict[str, Any]]:
        """The finalized models of the run (trial -> record: ``metrics``, ``search_metrics``,
        ``epochs``, ``from``); see :meth:`finalize`."""
        from nas.run_folder import read_finals

        return read_finals(self.run.dir)

    def to_dict(self) -> dict[str, Any]:
        """The front as JSON-ready data: each model's search-time ``metrics`` (objectives,
        constrained metrics, and flops / params / size_bytes / test_accuracy always), its
        ``final`` record when finalized, and its ``exported`` metrics (test accuracy and latencies
        at batch 1 and the configured batch, file sizes, int8 timing) when ``RUN_DIR/exports``
        holds its export."""
        import contextlib
        import json

        from nas.front import final_cost_disagreements

        out = self.front.to_dict()
        finals = self.finals()
        costs = final_cost_disagreements(self.points, finals)
        for row in out["front"]:
            if row["number"] in finals:
                row["final"] = finals[row["number"]]
            row["costs_disagree"] = costs.get(row["number"])
            exported = self.run.dir / "exports" / f"trial-{row['number']:05d}" / "metrics.json"
            # not exported there (or exported elsewhere with --to): no "exported" record
            with contextlib.suppress(OSError, ValueError, KeyError):
                row["exported"] = json.loads(exported.read_text())["exported"]
        return out

    def finalize(
        self,
        select: str | Sequence[int] = "front",
        *,
        epochs: float | None = None,
        start: str = "scratch",
        workers: int | None = None,
        progress: bool = True,
    ) -> dict[int, dict[str, Any]]:
        """Retrain the selected models (``front``, ``knee`` or trial numbers) on the full training
        split for ``epochs`` (default: the search's ``train.epochs``), from ``scratch`` or the
        ``search-weights``; re-measure them on the test split. See :mod:`nas.finalize`."""
        from nas.finalize import finalize
        from nas.run_folder import select_points

        points = select_points(self.run, self.front, select)
        n = self.run.exp.train.epochs if epochs is None else epochs
        return finalize(self.run, points, epochs=n, start=start, workers=workers, progress=progress)

    def export(
        self,
        to: str | Path | None = None,
        select: str | Sequence[int] | None = None,
        progress: bool = True,
    ) -> list[Path]:
        from nas.export import export_selected

        return export_selected(self.run, self.front, to, select, progress=progress)


def metric_direction(metric: str) -> str | None:
    """The direction of a registered objective (``test_accuracy`` is ``accuracy``'s)."""
    from objectives import OBJECTIVES

    base = metric.removeprefix("test_")
    return OBJECTIVES.get(base).direction if base in OBJECTIVES else None


def prepare(path: str | Path, *, out: str | Path | None = None, **search: Any) -> Run:
    """Validate everything a run needs before touching its folder; return the Run."""
    exp = with_overrides(load_experiment(path), **search)
    run_dir = Path(out) if out is not None else Path("runs") / (exp.name or Path(path).stem)
    frozen = run_dir / EXPERIMENT_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise NasError(f"run folder {run_dir} is a file; pass a folder path with --out")
    if frozen.is_file():
        old = read_experiment(run_dir)
        diff = _first_difference(old.to_dict(), exp.to_dict())
        if diff:
            raise NasError(
                f"{run_dir} holds a run of a different experiment ({diff!r} changed); "
                f"pass --out for a new run folder, or restore {diff!r}"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise NasError(f"{run_dir} exists and is not a run folder; pass --out with another path")
    resolve_objectives(exp)  # unknown objective / constraint names
    parse_compression(exp.compression)  # unknown techniques, knob ranges outside their domain
    check_url(exp.search.storage)
    if exp.search.storage and exp.search.storage.startswith("journal:"):
        check_journal(journal_path(exp.search.storage, run_dir))  # never append to another file
    if exp.search.backend == "ray":
        from nas.search._ray import check_address

        check_address(exp.search.address)  # an unreachable cluster: fail before writing
    if exp.search.storage and not exp.search.storage.startswith("journal:"):
        open_storage(exp.search.storage, run_dir)  # unreachable database: fail before writing
    splits = load_data(exp.data)
    preflight(exp, splits)
    if exp.search.mode == "supernet":
        from nas.supernet.search import check_experiment

        check_experiment(exp, splits)
    run_dir.mkdir(parents=True, exist_ok=True)
    frozen.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    return Run(run_dir, exp, splits)


def run(
    path: str | Path,
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    trials: int | None = None,
    sampler: str | None = None,
    storage: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
    backend: str | None = None,
    address: str | None = None,
) -> Run:
    """Run (or resume) the experiment at ``path``; return its :class:`Run`.

    ``run.front(where=...)`` gives the Pareto front; ``.export(to)`` exports it.
    """
    r = prepare(
        path,
        out=out,
        workers=workers,
        trials=trials,
        sampler=sampler,
        storage=storage,
        timeout=timeout,
        backend=backend,
        address=address,
    )
    return _search(r, progress=progress)


def join(
    run_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
    wait: float = 0.0,
) -> Run:
    """Add workers (on this host) to the search of an existing run folder; return the run.

    The run's study must be in storage every host reaches (``search.storage``, e.g.
    ``postgresql://...``) and the run folder on shared storage (trials save weights there).
    ``nas run`` creates both: ``wait`` seconds (0: none) are given to it to do so, polling.
    """
    if workers is not None and workers < 1:
        raise NasError(f"--workers must be >= 1, got {workers}")
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            r = Run.open(run_dir)
            r.study()  # joins a search `nas run` started; never creates one
            break
        except NasError as err:
            if time.monotonic() >= deadline:
                raise NasError(
                    f"{err} (a worker joins the search `nas run` started: start it first, or "
                    f"give it time with `nas worker {run_dir} --wait SECONDS`)"
                ) from None
            if progress and not told:
                print(f"[search] waiting up to {wait:g} s for `nas run` to start the search in "
                      f"{run_dir}", file=sys.stderr, flush=True)  # fmt: skip
                told = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if workers is not None:
        search = r.exp.search.model_copy(update={"workers": workers})
        r.exp = r.exp.model_copy(update={"search": search})
    return _search(r, progress=progress, joining=True)


def _search(r: Run, *, progress: bool, joining: bool = False) -> Run:
    s = r.exp.search
    repair_storage(s.storage, r.dir)  # a torn journal tail: rewritten before anything appends
    supernet = s.mode == "supernet"
    settings = SearchSettings(
        n_trials=s.trials,
        workers=s.workers,
        # scoring is cheap in supernet mode: an evolutionary search (as OFA's) over many
        sampler="nsga2" if supernet and s.sampler == "auto" else s.sampler,
        seed=s.seed,
        storage=s.storage,
        timeout=s.timeout,
        threads_per_worker=s.threads_per_worker,
        heartbeat_seconds=s.heartbeat_seconds,
        max_rejections=s.max_rejections,
        backend=s.backend,
        address=s.address,
        cpus_per_trial=s.cpus_per_trial,
        gpus_per_trial=s.gpus_per_trial,
    )
    if supernet:
        from nas.supernet import search as supernet_mode

        problem: ExperimentProblem = supernet_mode.prepare(r, progress)
    else:
        problem = ExperimentProblem(r.exp, r.dir, r.splits)
    optimize(
        functools.partial(problem_from_run_dir, r.dir.resolve()),
        settings,
        r.dir,
        progress=progress,
        problem=problem,
        joining=joining,
    )
    if supernet:
        supernet_mode.after_search(r, progress)
    r.write_front()
    return r
