"""Trials left RUNNING by a dead process are failed and queued again (when they had drawn their
candidate in full; else they are failed only, and a retry never trains a duplicate)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from nas.search._worker import recover_stale, worker_identity


def _study(tmp_path: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, directions=["maximize"])


def test_a_trial_asked_by_a_process_killed_before_tagging_it_is_retried(tmp_path: Path) -> None:
    study = _study(tmp_path)
    untagged = study.ask()  # a SIGKILL between study.ask() and the worker tag leaves this
    untagged.suggest_int("w", 1, 8)
    mine = study.ask()
    mine.set_user_attr("worker", worker_identity())  # alive: this process
    mine.set_user_attr("sample_seconds", 0.1)  # its candidate was drawn: a retry trains it
    dead = study.ask()
    dead.set_user_attr("worker", {"host": worker_identity()["host"], "pid": 2**22 + 7})
    dead.suggest_int("w", 1, 8)
    dead.set_user_attr("sample_seconds", 0.1)
    lock = tmp_path / ".ask.lock"
    assert recover_stale(study, lock, own=True) == [mine.number]  # Ctrl-C: only our own
    assert sorted(recover_stale(study, lock)) == [untagged.number, dead.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[untagged.number].state == TrialState.FAIL
    assert trials[untagged.number].user_attrs["error"] == "worker process died while asking"
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # the untagged trial died before its candidate was drawn: nothing to retry
    assert {t.user_attrs["retry_of"] for t in waiting} == {mine.number, dead.number}
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


class _OneParam:
    """Four candidates; evaluating one records it (a duplicate would be trained twice)."""

    def __init__(self) -> None:
        self.directions = {"score": "maximize"}
        self.constraints: dict = {}
        self.trained: list[int] = []

    def sample(self, trial: optuna.Trial) -> int:
        return trial.suggest_categorical("w", [1, 2, 3, 4])

    def static(self, candidate: int) -> dict[str, float]:
        return {}

    def evaluate(self, candidate: int, trial: optuna.Trial, report: object) -> dict[str, float]:
        self.trained.append(candidate)
        return {"score": float(candidate)}


def test_a_kill_between_proposal_and_params_trains_no_duplicate(tmp_path: Path) -> None:
    from nas.search._worker import run_loop

    study = _study(tmp_path)
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    problem = _OneParam()
    lock = tmp_path / ".ask.lock"
    run_loop(study, problem, n_trials=3, lock=lock)
    # a worker killed after its proposal was recorded, before its params were
    dead = study.ask()
    dead.set_user_attr("worker", {"host": worker_identity()["host"], "pid": 2**22 + 9})
    dead.set_user_attr("proposal", {"mode": "random"})
    assert recover_stale(study, lock) == [dead.number]
    # an old retry queued with empty params (as earlier versions did) is checked too
    study.enqueue_trial({}, user_attrs={"retry_of": dead.number}, skip_if_exists=False)
    run_loop(study, problem, n_trials=4, lock=lock, max_streak=50)
    assert sorted(problem.trained) == sorted(set(problem.trained)), problem.trained
    assert len(problem.trained) == 4


def test_a_dead_pid_under_the_same_host_name_elsewhere_is_not_recovered(tmp_path: Path) -> None:
    """Two machines (or containers) with one host name: a process id recorded on the other means
    nothing here, so its trial is left to the heartbeat instead of being failed while it trains.
    The same dead pid recorded in this kernel boot and PID namespace is recovered."""
    study = _study(tmp_path)
    me = worker_identity()
    assert me["pids"]  # this kernel boot and PID namespace
    twin = study.ask()
    twin.set_user_attr("worker", {**me, "pid": 2**22 + 11, "start": None, "pids": "other-boot"})
    here = study.ask()
    here.set_user_attr("worker", {**me, "pid": 2**22 + 13, "start": None})
    assert recover_stale(study, tmp_path / ".ask.lock") == [here.number]
    assert study.get_trials(deepcopy=False)[twin.number].state == TrialState.RUNNING
