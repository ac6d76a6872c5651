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
    # the same selection and table as a run's front
    best = result.front.best("quality")
    assert best.metrics["quality"] == max(p.metrics["quality"] for p in result.front)
    assert result.front.knee() in list(result.front)
    table = result.front.table()
    assert "why on the front" in table and f"{best.number}" in table
    assert result.front[0] is next(iter(result.front))


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
    if sampler == "auto":  # violators are dropped among the proposals: no trial is even made
        assert not rejected
        assert sum(t.user_attrs["proposal"]["infeasible"] for t in complete) > 0
        return
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


def _space_grid(trial: optuna.Trial) -> tuple[int, int]:
    return trial.suggest_int("a", 0, 2), trial.suggest_categorical("b", ["x", "y", "z"])


def test_auto_never_evaluates_a_candidate_twice_and_stops_when_the_space_is_exhausted() -> None:
    seen: list[tuple[int, str]] = []

    def evaluate(c: tuple[int, str]) -> dict[str, float]:
        seen.append(c)
        return {"quality": c[0] + ord(c[1])}

    result = nas.search(
        _space_grid, evaluate, {"quality": "maximize"}, n_trials=20, sampler="auto", seed=1
    )
    assert len(seen) == len(set(seen)) == 9  # 3 x 3 candidates, each evaluated once
    assert len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 9


def _failing(**returns: object) -> object:
    def evaluate(c: float) -> dict[str, object]:
        return dict(returns)

    return evaluate


@pytest.mark.parametrize(
    ("evaluate", "match"),
    [
        (_failing(q=1.0), r"no value for objective\(s\) \['quality'\].*returned \['cost', 'q'\]"),
        (_failing(quality=float("nan")), "'quality' is nan; return a finite number"),
        (_failing(quality="high"), "'quality' is 'high' \\(str\\), not a number"),
        (lambda c: [c], "must return a dict of metrics, got list"),
    ],
    ids=["missing-key", "nan", "string", "not-a-dict"],
)
def test_a_consistent_mistake_stops_the_search_after_three_failed_trials(
    evaluate: object, match: str
) -> None:
    with pytest.raises(NasError, match=match) as info:
        nas.search(space, evaluate, DIRS, static={"cost": lambda c: c}, n_trials=50)
    assert "3 trials in a row failed" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_failing_candidate_is_recorded_and_the_search_goes_on() -> None:
    def evaluate(c: float) -> dict[str, float]:
        if c > 0.8:
            raise RuntimeError("diverged")
        return {"quality": c**0.5}

    result = _search_with(evaluate, sampler="random", n_trials=15)
    failed = result.study.get_trials(states=(TrialState.FAIL,))
    assert failed, "x ~ U(0, 1) over 15+ trials must hit x > 0.8"
    assert all(t.user_attrs["error"] == "RuntimeError: diverged" for t in failed)
    assert len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 15


def test_a_static_metric_that_raises_fails_the_trial_with_its_name() -> None:
    def cost(c: float) -> float:
        raise ZeroDivisionError("division by zero")

    with pytest.raises(NasError, match="static metric 'cost' raised ZeroDivisionError"):
        nas.search(space, Evaluate(), DIRS, static={"cost": cost}, n_trials=5, sampler="random")


def _search_with(evaluate: object, **kwargs: object) -> SearchResult:
    return nas.search(space, evaluate, DIRS, static={"cost": lambda c: c}, seed=0, **kwargs)


def test_an_optuna_sampler_instance_is_used_as_it_is() -> None:
    smp = optuna.samplers.RandomSampler(seed=3)
    result = _search_with(Evaluate(), sampler=smp, n_trials=4)
    assert result.study.sampler is smp
