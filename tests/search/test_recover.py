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


def _write_forever(journal: str) -> None:
    from nas.search._storage import open_storage

    study = optuna.load_study(study_name="w", storage=open_storage(f"journal:{journal}", Path()))
    trial = study.ask()
    for i in range(10**9):  # each write takes the journal's lock (and fsyncs under it)
        trial.set_user_attr("i", i)


def test_workers_are_stopped_between_journal_writes(tmp_path: Path) -> None:
    """The driver stops its workers on SIGTERM / Ctrl-C / a worker's error with SIGKILL. Killed
    mid-write, a worker left Optuna's lock behind, and the driver's own next write (failing the
    worker's trial) waited on it for ever (CI hung in test_sigterm_stops_the_workers_too): with
    the relative run folder the lock's link did not resolve, so Optuna never broke it. _stop
    kills while it holds the lock, and the lock's link is absolute."""
    import multiprocessing as mp
    import os
    import threading
    import time

    from nas.search._local import _stop
    from nas.search._storage import open_storage

    os.chdir(tmp_path)  # the default relative run folder, as users run it
    url = "journal:runs/x/study.journal"
    study = optuna.create_study(study_name="w", storage=open_storage(url, Path()))
    lock = Path("runs/x/study.journal.lock")
    for _ in range(40):  # without the lock held, 2 runs in 3 failed with 20 rounds
        child = mp.get_context("spawn").Process(target=_write_forever, args=(url[8:],))
        child.start()
        while not study.get_trials(deepcopy=False) or "i" not in study.trials[-1].user_attrs:
            time.sleep(0.05)
        time.sleep(0.05)
        _stop({0: child}, study)
        assert not child.is_alive()
        assert not lock.is_symlink(), "a worker was killed holding the journal's lock"
        wrote = threading.Thread(target=study.set_user_attr, args=("after", 1), daemon=True)
        wrote.start()
        wrote.join(timeout=20)
        assert not wrote.is_alive(), "the next write hangs"
    lock_obj = study._storage._backend._lock  # type: ignore[attr-defined]
    lock_obj.acquire()  # as a writer killed now would leave it: a link Optuna can resolve
    try:
        assert os.path.isabs(os.readlink(lock)) and lock.resolve().is_file()
    finally:
        lock_obj.release()
