"""Workers on one PostgreSQL study: a real server (Debian's postgresql), started on loopback by the
fixture in a temp folder; one worker process is SIGKILLed mid-trial and the others finish the
search, with the lost trial failed by its stopped heartbeat and retried once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

import nas
from nas.search._problem import fully_drawn
from tests.conftest import ROOT, experiment

N_TRIALS = 9


def _wait_for(check: Callable[[], object], timeout: float = 180) -> object:
    end = time.time() + timeout
    while time.time() < end:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("timed out")


def _nas(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "nas.cli", *args], cwd=ROOT, env=env, stdout=f, stderr=f
        )


def test_three_workers_share_a_postgres_study_and_survive_a_sigkill(
    postgres: str, tmp_path: Path
) -> None:
    path = experiment(
        tmp_path,
        train__epochs=40,  # trials of a few seconds: time to kill one mid-trial
        search__trials=N_TRIALS,
        search__workers=1,
        search__storage=postgres,
        search__heartbeat_seconds=1,
        search__sampler="auto",
    )
    out = tmp_path / "run"
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    first = _nas("run", str(path), "--out", str(out), "--no-export", log=logs[0])
    _wait_for(lambda: (out / "experiment.yaml").is_file())
    others = [_nas("worker", str(out), "--workers", "1", log=log) for log in logs[1:]]
    victim_proc = others[0]

    def victims_trial() -> object:
        for t in nas.load(str(out)).study().get_trials(deepcopy=False):
            w = t.user_attrs.get("worker", {})
            # drawn in full: training (one killed while drawing trained nothing: not retried)
            if t.state == TrialState.RUNNING and w.get("pid") == victim_proc.pid and fully_drawn(t):
                return t
        return None

    try:
        victim = _wait_for(victims_trial)
        os.kill(victim_proc.pid, signal.SIGKILL)  # at once: mid-trial (trials take seconds)
        for p in (first, others[1]):
            try:
                rc: int | None = p.wait(timeout=300)
            except subprocess.TimeoutExpired:  # say what hangs, with the logs (CI once did)
                rc = None
            if rc != 0:
                states = [
                    (t.number, t.state.name, t.user_attrs.get("worker", {}).get("pid"))
                    for t in nas.load(str(out)).study().get_trials(deepcopy=False)
                ]
                tails = "\n".join(log.read_text()[-3000:] for log in logs)
                raise AssertionError(f"exit {rc}; trials {states}; victim {victim}\n{tails}")
    finally:
        for p in (first, *others):
            if p.poll() is None:
                p.kill()
                p.wait()

    trials = nas.load(str(out)).study().get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert len({t.number for t in complete}) == N_TRIALS
    killed = next(t for t in trials if t.number == victim.number)  # type: ignore[attr-defined]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    # found by the heartbeat, or first by a worker on the same host that saw the process gone
    assert retries[0].user_attrs["retry_reason"] in (
        "worker lost (no heartbeat)",
        "worker process died",
    )
    assert retries[0].params == killed.params
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == N_TRIALS  # no candidate trained twice to completion
    hosts = {t.user_attrs["worker"]["pid"] for t in complete}
    assert len(hosts) >= 2  # the surviving workers shared the work
    for log in logs:
        assert "s3cret-pw" not in log.read_text()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shown = subprocess.run(
        [sys.executable, "-m", "nas.cli", "export", str(out), "--select", "knee"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert "s3cret-pw" not in shown.stdout + shown.stderr
    for f in (out / "exports").rglob("*.json"):
        assert "s3cret-pw" not in f.read_text()


def test_the_ask_lock_is_a_postgres_advisory_lock(postgres: str, tmp_path: Path) -> None:
    import optuna
    from sqlalchemy import create_engine, text

    from nas.search._storage import open_storage
    from nas.search._worker import ask_lock

    url = postgres.replace("nas_test", "postgres")
    study = optuna.create_study(storage=open_storage(url, tmp_path))
    probe = create_engine(url)

    def advisory_locks() -> int:
        with probe.connect() as conn:
            sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            return int(conn.execute(text(sql)).scalar_one())

    with ask_lock(study, tmp_path / ".ask.lock"):
        assert advisory_locks() == 1  # held in the database: every host sees it
        assert not (tmp_path / ".ask.lock").exists()  # not the one-host file lock
    assert advisory_locks() == 0
    probe.dispose()


def test_a_survivor_waits_for_a_dead_workers_last_trial_and_retrains_it(
    postgres: str, tmp_path: Path
) -> None:
    """The last trial's worker died (its heartbeat stopped) while the others had asked for the
    rest: a survivor does not exit with the search one short, it waits until the heartbeat is
    stale, then trains the retry (issue 24, item 4)."""

    from nas.search._problem import SAMPLED
    from nas.search._worker import run_loop

    storage, study, problem = _heartbeat_study(postgres, tmp_path, "survivor")
    lost = study.ask()  # a worker drew its candidate, beat once, and died
    lost.suggest_int("x", 0, 1000)
    lost.set_user_attr(SAMPLED, 0.0)
    storage.record_heartbeat(lost._trial_id)
    t0 = time.time()
    run_loop(study, problem, n_trials=3, lock=tmp_path / ".ask.lock")
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == 3
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    assert [t.number for t in by_state[TrialState.FAIL]] == [lost.number]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert time.time() - t0 >= 3 * 1 - 0.5  # it waited for the grace period, not less


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(
    postgres: str, tmp_path: Path
) -> None:
    """A worker killed after it drew and tagged its trial but before the trial's first heartbeat
    (the window that hung CI's three-worker test: Optuna never finds a trial with no heartbeat
    stale): a survivor gives it a heartbeat, so it goes stale, is failed and retried. A trial
    asked by a worker that died before tagging it (no params) is failed and not retried."""

    from nas.search._problem import SAMPLED
    from nas.search._worker import run_loop

    _, study, problem = _heartbeat_study(postgres, tmp_path, "silent")
    lost = study.ask()  # drew, tagged, then died: no heartbeat recorded
    lost.suggest_int("x", 0, 1000)
    lost.set_user_attr(SAMPLED, 0.0)
    lost.set_user_attr("worker", {"host": "elsewhere", "pid": 1, "start": None})
    half = study.ask()  # asked, then died before tagging or drawing
    run_loop(study, problem, n_trials=3, lock=tmp_path / ".ask.lock", deadline=time.time() + 60)
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == 3, by_state  # before the fix: 2, then a hang
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    assert sorted(t.number for t in by_state[TrialState.FAIL]) == [lost.number, half.number]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert retry.user_attrs["retry_of"] == lost.number and retry.params == lost.params


def _heartbeat_study(postgres: str, tmp_path: Path, name: str) -> tuple[Any, Any, Any]:
    """A fresh study on PostgreSQL with a 1 s heartbeat, and a one-parameter problem."""
    import uuid

    import optuna

    from nas.api import _FunctionProblem
    from nas.search._storage import open_storage

    storage = open_storage(postgres, tmp_path, heartbeat=1)
    study = optuna.create_study(
        storage=storage, study_name=f"{name}-{uuid.uuid4().hex}", direction="maximize"
    )
    problem = _FunctionProblem(
        lambda trial: trial.suggest_int("x", 0, 1000), lambda x: {"y": float(x)},
        {"y": "maximize"}, {}, {},
    )  # fmt: skip
    return storage, study, problem
