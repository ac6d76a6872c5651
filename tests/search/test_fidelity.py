"""MO-ASHA: rungs, ranking, and early stopping through nas.search's two-argument evaluate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import nas
from nas.errors import NasError
from nas.search import MOASHA
from nas.search._fidelity import rank_position
from tests.conftest import experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRS = {"quality": "maximize", "cost": "minimize"}


def test_rungs_are_geometric_from_the_first_budget() -> None:
    s = MOASHA(eta=3)
    assert s.rungs_between(1, 0, 27) == [1, 3, 9, 27]
    assert s.rungs_between(1, 1, 9) == [3, 9]
    assert MOASHA(min_budget=2, eta=2, max_budget=16).rungs_between(1, 0, 100) == [2, 4, 8]


def test_rank_position_is_pareto_rank_then_hypervolume_contribution() -> None:
    rows = [{"q": 0.9, "c": 5.0}, {"q": 0.5, "c": 1.0}, {"q": 0.8, "c": 2.0}]
    dirs = {"q": "maximize", "c": "minimize"}
    assert rank_position([*rows, {"q": 0.4, "c": 6.0}], dirs) == 3  # dominated by all
    assert rank_position([*rows, {"q": 0.95, "c": 0.5}], dirs) == 0  # dominates all
    # on the first front with the others: placed by how much hypervolume it alone adds
    ends = [{"q": 1.0, "c": 10.0}, {"q": 0.0, "c": 0.0}]
    assert rank_position([*ends, {"q": 0.5, "c": 1.0}], dirs) == 0  # the knee adds most
    # next to an end it adds little, but still more than the end it hides (place 1, not 0)
    assert rank_position([*ends, {"q": 0.995, "c": 9.95}], dirs) == 1


@pytest.mark.parametrize("bad", [0, 1, -2])
def test_bad_eta(bad: float) -> None:
    with pytest.raises(NasError, match="eta must be > 1"):
        MOASHA(eta=bad)


def _space(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def _curve_evaluate(calls: list[int]) -> Callable[..., dict[str, float]]:
    """quality grows with the budget toward 1 - (x - 0.7)^2; cost = x (static)."""

    def evaluate(x: float, report: Callable[[float, dict[str, float]], None]) -> dict[str, float]:
        q = 0.0
        for epoch in range(1, 10):
            calls.append(epoch)
            q = (1 - (x - 0.7) ** 2) * (1 - 0.5**epoch)
            report(epoch, {"quality": q})
        return {"quality": q}

    return evaluate


def _search(calls: list[int], **kwargs: object) -> nas.api.SearchResult:
    evaluate = _curve_evaluate(calls)
    return nas.search(_space, evaluate, DIRS, static={"cost": lambda x: x}, seed=0, **kwargs)


@pytest.mark.parametrize("sampler", ["random", "auto"])
def test_mo_asha_stops_candidates_early_and_keeps_them_off_the_front(sampler: str) -> None:
    calls: list[int] = []
    result = _search(calls, n_trials=30, sampler=sampler, fidelity={"eta": 3, "max_budget": 9})
    trials = result.study.get_trials()
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(stopped) + len(complete) == 30  # stopped trials count as evaluations
    assert stopped, "MO-ASHA must stop some of 30 candidates"
    for t in stopped:
        assert t.user_attrs["stopped"]["budget"] in (1, 3)
        assert "place" in t.user_attrs["stopped"]["reason"]
        assert len(t.user_attrs["curve"]) == t.user_attrs["stopped"]["budget"]
    assert len(calls) < 30 * 9  # training saved
    front = {p.number for p in result.front}
    assert front <= {t.number for t in complete}
    assert all(len(t.user_attrs["curve"]) == 9 for t in complete)


def test_reports_without_a_scheduler_only_record_the_curve() -> None:
    calls: list[int] = []
    result = _search(calls, n_trials=6, sampler="random", fidelity=False)
    assert len(calls) == 6 * 9
    assert all(len(t.user_attrs["curve"]) == 9 for t in result.study.trials)


def test_budgets_that_do_not_increase_fail_the_trial_with_a_reason() -> None:
    calls: list[int] = []

    def evaluate(x: float, report: Callable[..., None]) -> dict[str, float]:
        calls.append(1)  # each trial better than the last: MO-ASHA never stops it at the rung
        report(2, {"quality": float(len(calls))})
        report(1, {"quality": float(len(calls))})
        return {"quality": x}

    with pytest.raises(NasError, match="budgets must increase, got 1 after 2"):
        nas.search(_space, evaluate, DIRS, static={"cost": lambda x: x}, n_trials=5)


def test_an_experiment_with_search_fidelity_stops_trainings_early(tmp_path: Path) -> None:
    path = experiment(
        tmp_path,
        train__epochs=4,
        search__trials=12,
        search__workers=1,
        search__fidelity={"eta": 2},  # rungs at 1 and 2 epochs
    )
    run = nas.run(str(path), out=tmp_path / "run", progress=False)
    trials = run.study().get_trials()
    stopped = [t for t in trials if "stopped" in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(stopped) + len(complete) == 12
    assert stopped, "MO-ASHA at rungs 1 and 2 epochs must stop some of 12 candidates"
    for t in stopped:
        assert t.state == TrialState.PRUNED
        budgets = [b for b, _ in t.user_attrs["curve"]]
        assert budgets == [1.0, 2.0][: len(budgets)]
        assert "train_steps" not in t.user_attrs  # training stopped before it finished
    for t in complete:
        assert [b for b, _ in t.user_attrs["curve"]] == [1.0, 2.0]
    assert {p.number for p in run.front().points} <= {t.number for t in complete}
