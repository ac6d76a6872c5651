"""The proposer of ``auto``: identity of candidates, proposal trials, the random start, repairs."""

from __future__ import annotations

import math

import moocore
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import nas
from nas.config import Bound
from nas.search._proposal import History, ProposalTrial, Proposer, distance, params_key

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_params_key_ignores_order_and_separates_values() -> None:
    assert params_key({"a": 1, "b": "x"}) == params_key({"b": "x", "a": 1})
    assert params_key({"a": 1, "b": "x"}) != params_key({"a": 2, "b": "x"})
    assert params_key({"a": 1}) != params_key({"a": 1, "b": None})


def _space(trial: optuna.trial.BaseTrial) -> dict[str, object]:
    return {
        "f": trial.suggest_float("f", 1e-3, 1.0, log=True),
        "s": trial.suggest_float("s", 0.0, 1.0, step=0.25),
        "i": trial.suggest_int("i", 2, 10, step=2),
        "c": trial.suggest_categorical("c", ["a", "b", "c"]),
    }


def test_proposal_trial_draws_inside_every_distribution() -> None:
    rng = np.random.default_rng(0)
    dists = {
        "f": FloatDistribution(1e-3, 1.0, log=True),
        "s": FloatDistribution(0.0, 1.0, step=0.25),
        "i": IntDistribution(2, 10, step=2),
        "c": CategoricalDistribution(["a", "b", "c"]),
    }
    values: dict[str, set[object]] = {k: set() for k in dists}
    for _ in range(300):
        t = ProposalTrial(rng)
        _space(t)
        assert t.distributions == dists
        for k, v in t.params.items():
            assert dists[k]._contains(dists[k].to_internal_repr(v)), (k, v)
            values[k].add(v)
    assert values["i"] == {2, 4, 6, 8, 10}
    assert values["s"] == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert values["c"] == {"a", "b", "c"}
    small = [v for v in values["f"] if isinstance(v, float) and v < 0.01]
    assert len(small) > 10  # log scale: a third of the draws below 1e-2


def test_proposal_trial_mutates_only_what_it_is_told() -> None:
    rng = np.random.default_rng(1)
    parent = {"f": 0.1, "s": 0.5, "i": 6, "c": "b"}
    for _ in range(50):
        t = ProposalTrial(rng, parent=parent, mutate=["i", "c"], scale=0.2)
        _space(t)
        assert t.params["f"] == parent["f"] and t.params["s"] == parent["s"]
        assert t.params["c"] != "b"  # a category mutation always changes it
        assert t.params["i"] != 6  # an int mutation moves at least one step


def test_distance_treats_categories_as_unordered() -> None:
    dists = {
        "c": CategoricalDistribution([1, 2, 30]),
        "f": FloatDistribution(1e-3, 1.0, log=True),
    }
    base = {"c": 1, "f": 0.01}
    # any two different categories are one apart, whatever their values
    assert distance(base, {"c": 2, "f": 0.01}, dists) == distance(base, {"c": 30, "f": 0.01}, dists)
    assert distance(base, {"c": 2, "f": 0.01}, dists) == 1.0
    assert distance(base, {"c": 1, "f": 0.1}, dists) == pytest.approx(1 / 3)  # log scale
    assert distance(base, {"c": 1}, dists) == 1.0  # a missing parameter


def test_a_rejected_pick_is_replaced_by_the_nearest_untried_feasible_candidate() -> None:
    rejected = {"f": 0.1, "s": 0.5, "i": 6, "c": "b"}
    proposer = Proposer({"f": "minimize"}, {"i": Bound(max=8)}, modes=("tpe", "gp"), n_init=2)
    done = [
        optuna.trial.create_trial(values=[0.5], user_attrs={"static": static})
        for static in ({}, {"i": 2.0})
    ]
    history = History(complete=done, seen={params_key(rejected)})
    history.rejected = rejected
    chosen = proposer.propose(history, _space, lambda c: {"i": float(c["i"])})
    assert chosen is not None and proposer.stats.mode == "nearest"
    assert chosen.params != rejected and chosen.params["i"] <= 8
    assert distance(chosen.params, rejected, chosen.dists) <= 1.0  # one small step away
    # with no rejected pick, a warm proposer leaves the choice to a fallback sampler: the GP
    # where an objective is known before training, TPE where none is
    history.rejected = None
    assert proposer.propose(history, _space, lambda c: {}) is None
    assert proposer.stats.mode == "tpe"
    done[1].user_attrs["static"] = {"f": 0.2}
    assert proposer.propose(history, _space, lambda c: {}) is None
    assert proposer.stats.mode == "gp"


def _zdt1(trial: optuna.trial.BaseTrial) -> np.ndarray:
    return np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(5)])


def _zdt1_f2(x: np.ndarray) -> dict[str, float]:
    g = 1 + 9 * float(np.mean(x[1:]))
    return {"f2": g * (1 - math.sqrt(x[0] / g))}


def _hv(result: nas.api.SearchResult) -> float:
    pts = np.array([[p.metrics["f1"], p.metrics["f2"]] for p in result.front])
    pts = pts[np.all(pts < 1.1, axis=1)]
    return float(moocore.hypervolume(pts, ref=[1.1, 1.1])) if len(pts) else 0.0


def test_auto_reaches_a_better_front_than_random_on_zdt1() -> None:
    kw = {
        "directions": {"f1": "minimize", "f2": "minimize"},
        "static": {"f1": lambda x: float(x[0])},
        "n_trials": 40,
        "seed": 0,
    }
    auto = nas.search(_zdt1, _zdt1_f2, sampler="auto", **kw)  # type: ignore[arg-type]
    rand = nas.search(_zdt1, _zdt1_f2, sampler="random", **kw)  # type: ignore[arg-type]
    assert _hv(auto) > 0.5 > _hv(rand)  # the true front's HV is about 0.87
    trials = auto.study.get_trials(states=(TrialState.COMPLETE,))
    modes = {t.user_attrs["proposal"]["mode"] for t in trials}
    assert modes == {"random", "gp"}  # f1 is known before "training": the GP picks
    assert all(t.user_attrs["static"] == {"f1": t.params["x0"]} for t in trials)


def test_a_failing_proposal_round_falls_back_to_random_sampling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def broken(self: object, *args: object) -> None:
        raise np.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(Proposer, "propose", broken)
    result = nas.search(
        _zdt1,
        _zdt1_f2,
        {"f1": "minimize", "f2": "minimize"},
        static={"f1": lambda x: float(x[0])},
        n_trials=5,
    )
    assert len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 5
