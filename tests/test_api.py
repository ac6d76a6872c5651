"""nas.search on a toy problem: x in [0, 1], cost = x (static), quality = sqrt(x) (evaluated)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import nas
from nas.api import SearchResult
from nas.config import Bound
from nas.errors import NasError

optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRS = {"quality": "maximize", "cost": "minimize"}
N_TRIALS = 12


def space(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


class Evaluate:
    """Counts calls and records every candidate it is given."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, c: float) -> dict[str, float]:
        self.seen.append(c)
        return {"quality": c**0.5}


def _search(evaluate: Evaluate, **kwargs: object) -> SearchResult:
    kwargs.setdefault("n_trials", N_TRIALS)
    return nas.search(space, evaluate, DIRS, static={"cost": lambda c: c}, seed=0, **kwargs)


def _dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    better = [a["quality"] >= b["quality"], a["cost"] <= b["cost"]]
    strictly = [a["quality"] > b["quality"], a["cost"] < b["cost"]]
    return all(better) and any(strictly)


def test_search_front_is_nondominated() -> None:
    ev = Evaluate()
    result = _search(ev, sampler="random")
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == N_TRIALS
    assert len(ev.seen) == N_TRIALS
    assert result.front
    for p in result.front:
        assert p.metrics["cost"] == pytest.approx(p.params["x"])
        assert p.metrics["quality"] == pytest.approx(p.params["x"] ** 0.5)
    for a in result.front:
        for t in complete:
            assert not _dominates(t.user_attrs["metrics"], a.metrics)
    # on this monotone trade-off every distinct completed trial is on the front
    assert len(result.front) == len({t.params["x"] for t in complete})


@pytest.mark.parametrize("sampler", ["auto", "random"])
def test_static_constraint_rejects_before_evaluate(sampler: str) -> None:
    ev = Evaluate()
    result = _search(ev, sampler=sampler, constraints={"cost": {"max": 0.3}})
    trials = result.study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    rejected = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) == N_TRIALS
    assert len(ev.seen) == N_TRIALS  # only candidates that passed were evaluated
    assert all(c <= 0.3 for c in ev.seen)
    assert rejected, "with x ~ U(0, 1) some candidates must break cost <= 0.3"
    for t in rejected:
        assert t.params["x"] > 0.3
        assert "cost" in t.user_attrs["rejected"]
        assert t.constraints["cost"] == pytest.approx(t.params["x"] - 0.3)  # > 0: infeasible
    assert all(p.metrics["cost"] <= 0.3 for p in result.front)


def test_constraint_on_an_evaluated_metric_keeps_infeasible_off_the_front() -> None:
    ev = Evaluate()
    cons = {"cost": Bound(max=0.5), "quality": {"min": 0.4}}  # feasible: 0.16 <= x <= 0.5
    result = _search(ev, sampler="random", n_trials=20, constraints=cons)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 20
    infeasible = [t for t in complete if t.constraints["quality"] > 0]
    assert infeasible, "some evaluated candidates must break quality >= 0.4"
    assert result.front
    for p in result.front:
        assert p.metrics["cost"] <= 0.5
        assert p.metrics["quality"] >= 0.4
    assert not {t.number for t in infeasible} & {p.number for p in result.front}


def test_search_is_deterministic() -> None:
    a, b = _search(Evaluate(), sampler="auto"), _search(Evaluate(), sampler="auto")
    assert [t.params for t in a.study.trials] == [t.params for t in b.study.trials]
    assert [p.number for p in a.front] == [p.number for p in b.front]


@pytest.mark.parametrize(
    "directions",
    [{"quality": "max", "cost": "minimize"}, {"quality": "maximize", "cost": "down"}],
)
def test_bad_directions(directions: dict[str, str]) -> None:
    ev = Evaluate()
    with pytest.raises(NasError, match="'maximize' or 'minimize'"):
        nas.search(space, ev, directions, static={"cost": lambda c: c}, n_trials=2)
    assert ev.seen == []


def test_unknown_sampler() -> None:
    with pytest.raises(NasError, match="unknown sampler 'annealing'"):
        _search(Evaluate(), sampler="annealing")


def test_missing_objective_in_evaluate() -> None:
    with pytest.raises(NasError, match="no value for objective"):
        nas.search(space, lambda c: {"q": c}, DIRS, static={"cost": lambda c: c}, n_trials=2)


@pytest.mark.parametrize(
    "bound", [{"min": 3, "max": 1}, {"maxx": 1}, {}], ids=["inverted", "unknown-key", "empty"]
)
def test_bad_constraint_is_a_one_line_nas_error(bound: dict[str, float]) -> None:
    with pytest.raises(NasError) as info:
        _search(Evaluate(), constraints={"cost": bound})
    assert "\n" not in str(info.value)
    assert "cost" in str(info.value)


def test_empty_directions() -> None:
    with pytest.raises(NasError):
        nas.search(space, Evaluate(), {}, n_trials=2)


def test_constraint_on_an_unknown_metric() -> None:
    with pytest.raises(NasError, match="cots"):
        _search(Evaluate(), n_trials=3, constraints={"cots": {"max": 0.1}})
