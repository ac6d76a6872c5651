"""``nas.search``: a multi-objective search over anything, with cheap metrics known before training.

    result = nas.search(space, evaluate, directions={"accuracy": "maximize", "flops": "minimize"},
                        static={"flops": count_flops}, n_trials=100)
    result.front   # [Point(number, params, metrics)]
    result.study   # the optuna.Study

``space(trial)`` returns a candidate (any object); ``static[name](candidate)`` are computed first,
so ``constraints`` on them reject a candidate before ``evaluate(candidate)`` runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from nas.config import Bound
from nas.errors import NasError
from nas.front import completed_points, nondominated
from nas.search._problem import Point
from nas.search._samplers import make_sampler
from nas.search._storage import load_study, open_storage
from nas.search._worker import run_loop


@dataclass
class SearchResult:
    front: list[Point]
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

    def static(self, candidate: Any) -> dict[str, float]:
        return {n: float(f(candidate)) for n, f in self.static_fns.items()}

    def evaluate(self, candidate: Any, trial: optuna.Trial) -> dict[str, float]:
        out = self.evaluator(candidate)
        if not isinstance(out, Mapping):
            raise NasError(f"evaluate must return a dict of metrics, got {type(out).__name__}")
        return {k: float(v) for k, v in out.items()}


def _bound(name: str, value: Bound | Mapping[str, float]) -> Bound:
    if isinstance(value, Bound):
        return value
    try:
        return Bound.model_validate(value)
    except ValidationError as err:
        e = err.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        raise NasError(f"constraints[{name!r}]: {msg}; write e.g. {{'max': 2e6}}") from None


def search(
    space: Callable[[optuna.Trial], Any],
    evaluate: Callable[[Any], Mapping[str, float]],
    directions: Mapping[str, str],
    *,
    static: Mapping[str, Callable[[Any], float]] | None = None,
    n_trials: int = 100,
    sampler: str = "auto",
    seed: int | None = 0,
    storage: str | None = None,
    constraints: Mapping[str, Bound | Mapping[str, float]] | None = None,
) -> SearchResult:
    """Run a multi-objective search in this process; return its front and study."""
    if not directions:
        raise NasError(
            "directions is empty; name at least one metric, e.g. {'accuracy': 'maximize'}"
        )
    bad = {k: v for k, v in directions.items() if v not in ("maximize", "minimize")}
    if bad:
        raise NasError(f"directions {bad} must be 'maximize' or 'minimize'")
    cons = {k: _bound(k, v) for k, v in (constraints or {}).items()}
    problem = _FunctionProblem(space, evaluate, dict(directions), cons, dict(static or {}))
    smp, _ = make_sampler(
        sampler,
        n_objectives=len(directions),
        n_trials=n_trials,
        workers=1,
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="nas-search-") as tmp:
        if storage is None:
            study = optuna.create_study(directions=list(directions.values()), sampler=smp)
        else:
            study = load_study(open_storage(storage, Path(tmp)), list(directions.values()), smp)
        run_loop(study, problem, n_trials=n_trials, lock=Path(tmp) / "ask.lock")
    feasible, _ = completed_points(study)
    return SearchResult(nondominated(feasible, dict(directions)), study)
