"""Trials left RUNNING by a dead process are failed and queued again."""

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
    dead = study.ask()
    dead.set_user_attr("worker", {"host": worker_identity()["host"], "pid": 2**22 + 7})
    lock = tmp_path / ".ask.lock"
    assert recover_stale(study, lock, own=True) == [mine.number]  # Ctrl-C: only our own
    assert sorted(recover_stale(study, lock)) == [untagged.number, dead.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[untagged.number].state == TrialState.FAIL
    assert trials[untagged.number].user_attrs["error"] == "worker process died while asking"
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert {t.user_attrs["retry_of"] for t in waiting} == {
        untagged.number,
        mine.number,
        dead.number,
    }
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
