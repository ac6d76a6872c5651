"""Every sampler runs a small constrained multi-objective search; ``auto`` explains its choice."""

from __future__ import annotations

import pytest

import nas
from nas.search import SAMPLERS, make_sampler
from nas.search._samplers import choose_sampler


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_reaches_exact_trial_count(name: str) -> None:
    calls = []

    def space(trial):
        return trial.suggest_float("x", 0.0, 1.0)

    def evaluate(x: float) -> dict[str, float]:
        calls.append(x)
        return {"quality": x**0.5}

    result = nas.search(
        space,
        evaluate,
        {"quality": "maximize", "cost": "minimize"},
        static={"cost": lambda x: x},
        n_trials=12,
        sampler=name,
        seed=1,
        constraints={"cost": {"max": 0.8}},
    )
    complete = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 12 == len(calls)
    assert all(x <= 0.8 for x in calls)  # violators are never evaluated
    assert result.front and all(p.metrics["cost"] <= 0.8 for p in result.front)


def test_auto_choice_depends_on_budget_and_objectives() -> None:
    assert choose_sampler("auto", n_objectives=2, n_trials=50, workers=1)[0] == "auto:gp"
    assert choose_sampler("auto", n_objectives=2, n_trials=600, workers=1)[0] == "auto:tpe"
    assert "pending" in choose_sampler("auto", n_objectives=2, n_trials=50, workers=4)[1]
    assert choose_sampler("auto", n_objectives=2, n_trials=5000, workers=1)[0] == "nsga2"
    assert choose_sampler("auto", n_objectives=4, n_trials=5000, workers=1)[0] == "nsga3"
    _, why = make_sampler("auto", n_objectives=2, n_trials=50, workers=1, seed=0)
    assert why.startswith("sampler auto:gp")


def test_auto_starts_at_random_then_hands_over_and_never_trains_a_duplicate() -> None:
    """The proposer's random start, then multivariate TPE picks (no objective is known before
    training); a pick already tried is rejected untrained and the nearest untried candidate is
    trained instead."""
    import optuna

    from nas.search._proposal import ProposedSampler

    sampler, _ = make_sampler("auto", n_objectives=1, n_trials=30, workers=1, seed=0)
    assert isinstance(sampler, ProposedSampler)
    assert isinstance(sampler.fallbacks["gp"], optuna.samplers.GPSampler)
    assert isinstance(sampler.fallbacks["tpe"], optuna.samplers.TPESampler)
    big, _ = make_sampler("auto", n_objectives=1, n_trials=600, workers=1, seed=0)
    assert list(big.fallbacks) == ["tpe"]  # type: ignore[attr-defined]
    seen: list[tuple[int, str]] = []

    def space(trial: optuna.Trial) -> tuple[int, str]:
        return trial.suggest_int("a", 0, 4), trial.suggest_categorical("b", list("vwxyz"))

    def evaluate(c: tuple[int, str]) -> dict[str, float]:
        seen.append(c)
        return {"quality": c[0] * 10 + ord(c[1])}

    result = nas.search(space, evaluate, {"quality": "maximize"}, n_trials=20, seed=0)
    assert len(seen) == len(set(seen)) == 20
    trials = result.study.trials
    modes = [t.user_attrs["proposal"]["mode"] for t in trials]
    assert modes[:5] == ["random"] * 5  # the random start, chosen by the proposer
    assert "tpe" in modes[5:]  # then TPE's picks
    for i, t in enumerate(trials[:-1]):  # a rejected pick: the next trial is its nearest repair
        if t.state.name == "PRUNED":
            assert trials[i + 1].user_attrs["proposal"]["mode"] == "nearest"


def test_unknown_sampler_is_bad_input() -> None:
    with pytest.raises(nas.NasError, match="choose one of"):
        make_sampler("cmaes", n_objectives=2, n_trials=5, workers=1, seed=0)


def test_an_exhausted_space_ends_the_run_with_a_reason(tmp_path, capsys) -> None:
    import yaml

    exp = {
        "name": "tiny",
        "data": {"name": "digits"},
        "space": {"name": "mlp", "args": {"max_depth": 1, "widths": [8, 16]}},
        "train": {"steps": 30},  # better than guessing: on the front
        "objectives": {"accuracy": "maximize", "params": "minimize"},
        "search": {"trials": 5},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    run = nas.run(str(path), out=tmp_path / "run", progress=True)
    assert len(run.study().get_trials()) == 2  # two candidates exist: each trained once
    assert "stopped at 2 of 5 evaluations: every candidate drawn was already tried" in (
        capsys.readouterr().err
    )


def test_a_killed_but_unreaped_worker_counts_as_dead() -> None:
    import os
    import signal
    import subprocess
    import time

    from nas.search._process import _proc_start, is_alive

    child = subprocess.Popen(["sleep", "30"])
    ident = {"host": __import__("socket").gethostname(), "pid": child.pid}
    ident["start"] = _proc_start(child.pid)
    assert is_alive(ident)
    os.kill(child.pid, signal.SIGKILL)
    time.sleep(0.3)  # not waited for: a zombie until reaped
    assert not is_alive(ident)
    child.wait()
