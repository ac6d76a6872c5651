"""``nas.search``: a multi-objective search over anything, with cheap metrics known before training.

    result = nas.search(space, evaluate, directions={"accuracy": "maximize", "flops": "minimize"},
                        static={"flops": count_flops}, n_trials=100)
    result.front            # the Pareto front: Point(number, params, metrics), in order
    result.front.table()    # as `nas front` prints it (why each point is on the front)
    result.front.knee(), result.front.best("accuracy")
    result.study            # the optuna.Study

``space(trial)`` returns a candidate (any object); ``static[name](candidate)`` are computed first,
so ``constraints`` on them reject a candidate before ``evaluate(candidate)`` runs, and the ``auto``
sampler uses them to choose its sampler and to replace a rejected pick (see
``nas.search._proposal``).

``evaluate(candidate, report)`` (two arguments) turns on multi-fidelity: call
``report(budget, {"accuracy": ...})`` at increasing budgets (epochs...) and let
:class:`nas.search.Stopped` propagate when MO-ASHA stops the candidate early.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from nas.config import Bound
from nas.errors import NasError
from nas.front import Front
from nas.search._fidelity import MOASHA
from nas.search._samplers import make_proposer, make_sampler
from nas.search._storage import load_study, open_storage
from nas.search._worker import run_loop


class SearchFront(Front):
    """The front of :func:`search`: a :class:`nas.front.Front` (``.knee()``, ``.best(metric)``,
    ``.hypervolume``, iterable as its points) that prints as a run's front does."""

    def table(self) -> str:
        from nas.report import front_table

        return front_table(self)


@dataclass
class SearchResult:
    front: SearchFront
    study: optuna.Study


@dataclass
class _FunctionProblem:
    space: Callable[[optuna.Trial], Any]
    evaluator: Callable[[Any], Mapping[str, float]]
    directions: dict[str, str]
    constraints: dict[str, Bound]
    static_fns: Mapping[str, Callable[[Any], float]]

    def sample(self, trial: optuna.Trial) -> Any:
        return self.space(trial)

    def __post_init__(self) -> None:
        self.reports = _takes_two(self.evaluator)

    def static(self, candidate: Any) -> dict[str, float]:
        out = {}
        for name, fn in self.static_fns.items():
            try:
                out[name] = fn(candidate)
            except Exception as err:
                raise NasError(
                    f"static metric {name!r} raised {type(err).__name__}: {err}"
                ) from err
        return out

    def evaluate(
        self, candidate: Any, trial: optuna.Trial, report: Callable[..., None]
    ) -> dict[str, float]:
        out = self.evaluator(candidate, report) if self.reports else self.evaluator(candidate)
        if not isinstance(out, Mapping):
            raise NasError(
                f"evaluate must return a dict of metrics, got {type(out).__name__}; "
                f"return e.g. {{'accuracy': 0.9}}"
            )
        return dict(out)


def _takes_two(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a second positional argument (the reporter)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    kinds = [p.kind for p in sig.parameters.values()]
    positional = sum(
        k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for k in kinds
    )
    return positional >= 2 or inspect.Parameter.VAR_POSITIONAL in kinds


def _bound(name: str, value: Bound | Mapping[str, float]) -> Bound:
    if isinstance(value, Bound):
        return value
    try:
        return Bound.model_validate(value)
    except ValidationError as err:
        e = err.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        raise NasError(f"constraints[{name!r}]: {msg}; write e.g. {{'max': 2e6}}") from None


def _scheduler(fidelity: MOASHA | Mapping[str, float] | bool | None) -> MOASHA | None:
    if fidelity is None or fidelity is True:
        return MOASHA()
    if fidelity is False:
        return None
    if isinstance(fidelity, MOASHA):
        return fidelity
    try:
        return MOASHA(**fidelity)
    except TypeError:
        raise NasError(
            f"fidelity {dict(fidelity)} has unknown keys; use min_budget, eta, max_budget"
        ) from None


def search(
    space: Callable[[optuna.Trial], Any],
    evaluate: Callable[[Any], Mapping[str, float]],
    directions: Mapping[str, str],
    *,
    static: Mapping[str, Callable[[Any], float]] | None = None,
    n_trials: int = 100,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    seed: int | None = 0,
    storage: str | None = None,
    constraints: Mapping[str, Bound | Mapping[str, float]] | None = None,
    fidelity: MOASHA | Mapping[str, float] | bool | None = None,
) -> SearchResult:
    """Run a multi-objective search in this process; return its front and study.

    Args:
        space: ``space(trial) -> candidate``, define-by-run with ``trial.suggest_*``.
        evaluate: ``evaluate(candidate) -> {metric: value}``, or ``evaluate(candidate, report)``
            for multi-fidelity (see the module docstring).
        directions: objective -> "maximize" | "minimize".
        static: cheap metrics ``fn(candidate) -> float`` computed before ``evaluate``.
        n_trials: evaluations to run (complete trials plus those stopped early).
        sampler: "auto" (see the README), "tpe", "nsga2", "nsga3", "random" or "gp"; or any Optuna
            sampler instance, used as it is.
        seed: seeds the sampler.
        storage: an Optuna storage URL; in memory when None.
        constraints: metric -> ``{"min": ..., "max": ...}``; infeasible points are never on the
            front, and violations of a static metric are never evaluated.
        fidelity: the MO-ASHA scheduler for a two-argument ``evaluate``: a :class:`MOASHA`, its
            keywords as a dict (``{"min_budget": 1, "eta": 3}``), or False to only record the
            reports. Default: MO-ASHA with eta 3 from the first budget reported.
    """
    if not directions:
        raise NasError(
            "directions is empty; name at least one metric, e.g. {'accuracy': 'maximize'}"
        )
    bad = {k: v for k, v in directions.items() if v not in ("maximize", "minimize")}
    if bad:
        raise NasError(f"directions {bad} must be 'maximize' or 'minimize'")
    cons = {k: _bound(k, v) for k, v in (constraints or {}).items()}
    problem = _FunctionProblem(space, evaluate, dict(directions), cons, dict(static or {}))
    if isinstance(sampler, optuna.samplers.BaseSampler):
        smp = sampler
    else:
        smp, _ = make_sampler(
            sampler, n_objectives=len(directions), n_trials=n_trials, workers=1, seed=seed
        )
    proposer = make_proposer(
        smp, directions=problem.directions, constraints=cons, n_trials=n_trials, seed=seed
    )
    scheduler = _scheduler(fidelity) if problem.reports else None
    with tempfile.TemporaryDirectory(prefix="nas-search-") as tmp:
        if storage is None:
            study = optuna.create_study(directions=list(directions.values()), sampler=smp)
        else:
            study = load_study(open_storage(storage, Path(tmp)), list(directions.values()), smp)
        run_loop(
            study,
            problem,
            n_trials=n_trials,
            lock=Path(tmp) / "ask.lock",
            proposer=proposer,
            scheduler=scheduler,
        )
    return SearchResult(SearchFront.from_study(study, dict(directions)), study)
