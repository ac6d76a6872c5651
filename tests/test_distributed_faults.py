"""Distributed runs killed at random moments (several seeds), as users run them: the CLI from a
temporary working folder with the default relative run folder (``runs/digits-quick``).

- a ``nas worker`` on a PostgreSQL study (heartbeat 1 s), SIGKILLed mid-trial; seed 2 kills it
  once the rest of the search is running (nothing left to ask: the others must wait for it). On the
  run's host (its process is seen gone) and in a PID namespace of its own, as on another
  machine (only its stopped heartbeat tells);
- the driver (``nas run``) of a Ray run on a 2-node loopback cluster, SIGKILLed; the same command
  is run again;
- a Ray worker process running a trial, or its whole worker node (its raylet and every Ray worker
  on it), killed at a random moment of the trial.

(A local worker and the local driver are killed at random moments in ``tests/test_faults.py``.)

Each asserts COMPLETE == requested, nothing RUNNING or WAITING, no params trained to completion
twice, every lost trial retried with its params, and exit code 0 (after re-running the same
command where the fault killed the command itself). Marked ``faults``: ``make test-faults``
(CI runs it after the default suite), except one Ray worker kill, which the default suite runs.
With ``NAS_FAULTS_LOG=FILE`` each scenario appends its counts by state and recovery times to
FILE (``benchmarks/distributed_faults.py`` does).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState

import nas
from nas.search._problem import fully_drawn
from tests.clusters import RAY_ENV, WORKER, RayCluster
from tests.conftest import ROOT, experiment

FAULTS = pytest.mark.faults  # `make test-faults`; one scenario stays in the default suite

TRIALS = 6
RUN = Path("runs") / "digits-quick"
EPOCHS = 80  # trials of 1-3 s on 2 cores: time to kill one mid-trial


@pytest.fixture
def ray_two_nodes(ray_cluster: RayCluster) -> RayCluster:
    """The cluster with its worker node up (a node-kill test before this one took it down)."""
    if not ray_cluster.worker_node_alive():
        ray_cluster.start_worker_node()
    return ray_cluster


def _database(url: str) -> str:
    """A fresh database on the server (each scenario's study starts empty)."""
    from sqlalchemy import create_engine, text

    name = f"nas_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def _nas(
    cwd: Path, *args: str, env: dict[str, str], log: Path, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """The CLI (after ``prefix``: ``unshare``), in a session of its own when there is one
    (killed as a group then: ``unshare`` and its child)."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "nas.cli", *args],
            cwd=cwd, env=env, stdout=f, stderr=f, start_new_session=bool(prefix),
        )  # fmt: skip


def _trials(cwd: Path) -> list[FrozenTrial]:
    try:
        return nas.load(str(cwd / RUN)).study().get_trials(deepcopy=False)
    except Exception:  # not created yet
        return []


def _wait(pred: Callable[[], Any], procs: list[subprocess.Popen[bytes]], log: Path) -> Any:
    end = time.time() + 300
    while time.time() < end:
        got = pred()
        if got:
            return got
        if all(p.poll() is not None for p in procs):
            return None  # the search ended before the moment came
        time.sleep(0.1)
    raise AssertionError("timed out waiting:\n" + log.read_text()[-3000:])


def _running(
    cwd: Path, at: int | None, where: Callable[[FrozenTrial], bool], fresh: float | None = None
) -> FrozenTrial | None:
    """A RUNNING trial matching ``where``, drawn in full (training), once ``at`` trials are
    complete; ``at=None``: once the rest of the search is running (nothing is left to ask).
    ``fresh``: only a trial started at most that many seconds ago (a kill lands mid-trial)."""
    trials = _trials(cwd)
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    running = [t for t in trials if t.state == TrialState.RUNNING and fully_drawn(t)]
    if done < (TRIALS - len(running) if at is None else at):
        return None
    now = datetime.now()
    for t in running:
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if where(t) and (fresh is None or age <= fresh):
            return t
    return None


def _check(cwd: Path, scenario: str, seed: int, killed: float) -> None:
    """The search is whole; log the counts by state and the recovery times."""
    trials = nas.load(str(cwd / RUN)).study().get_trials()
    by = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    assert by["COMPLETE"] == TRIALS, by
    assert by["RUNNING"] == 0 and by["WAITING"] == 0, by
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(keys)) == len(keys), "a candidate was trained twice"
    lost = [t for t in trials if t.state == TrialState.FAIL]
    retry_started = None
    for t in lost:  # every failure here is a lost trial: its params are trained again ...
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        if not fully_drawn(t):  # ... unless it was lost while drawing them: nothing trained
            assert not retries, (t.number, t.params)
            continue
        (retry,) = retries
        assert retry.params == t.params
        assert retry.state == TrialState.COMPLETE, (retry.number, retry.state)
        if retry.datetime_start is not None:
            start = retry.datetime_start.timestamp() - killed
            retry_started = start if retry_started is None else min(retry_started, start)
    end = max(t.datetime_complete.timestamp() for t in done if t.datetime_complete)
    record = {
        "scenario": scenario,
        "seed": seed,
        "states": {k: v for k, v in by.items() if v},
        "lost": [t.number for t in lost],
        "retry_started_s": None if retry_started is None else round(retry_started, 2),
        "search_done_s": round(end - killed, 2),
    }
    if os.environ.get("NAS_FAULTS_LOG"):
        with open(os.environ["NAS_FAULTS_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process, and its session when it has one (``unshare`` and its child)."""
    if os.getpgid(proc.pid) == proc.pid:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()


def _pid_namespace(proc: subprocess.Popen[bytes]) -> str | None:
    """The PID namespace of the process ``unshare --fork`` (``proc``) started."""
    try:
        child = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0]
        return os.readlink(f"/proc/{child}/ns/pid")
    except (OSError, IndexError):
        return None


@FAULTS
@pytest.mark.parametrize(
    ("seed", "host"), [(0, "same"), (1, "same"), (2, "same"), (0, "other"), (2, "other")]
)
def test_a_nas_worker_on_postgres_killed_at_a_random_moment(
    postgres: str, tmp_path: Path, seed: int, host: str
) -> None:
    """``host="same"``: the workers share the run's host; the others see the victim's process
    gone at their next ask. ``"other"``: each ``nas worker`` runs in a PID namespace of its own
    (``unshare --pid``), as on another machine: its process id means nothing to the others, and
    only its stopped heartbeat tells them it died (after the 3 s grace)."""
    if host == "other" and not _unshare_works():
        pytest.skip("unshare --pid is not permitted here (needs CAP_SYS_ADMIN)")
    rng = random.Random(seed)
    at = None if seed == 2 else rng.randint(1, TRIALS - 2)  # completed at the kill
    experiment(
        tmp_path,
        train__epochs=EPOCHS,  # 3 processes share 2 cores here: trials of several seconds
        search__trials=TRIALS,
        search__workers=1,
        search__storage=_database(postgres),
        search__heartbeat_seconds=1,
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = tmp_path / "run.log"
    run = _nas(tmp_path, "run", "exp.yaml", "--no-export", "-q", env=env, log=log)
    prefix = ("unshare", "--pid", "--fork") if host == "other" else ()
    workers = [  # started with the run: they wait for it to create the study
        _nas(tmp_path, "worker", str(RUN), "--wait", "120", "-q", env=env, log=log, prefix=prefix)
        for _ in range(2)
    ]
    procs = [run, *workers]

    def whose(t: FrozenTrial) -> subprocess.Popen[bytes] | None:
        ident = t.user_attrs["worker"]
        for p in workers:
            if host == "same" and ident["pid"] == p.pid:
                return p
            if host == "other" and str(ident.get("pids")).endswith("/" + str(_pid_namespace(p))):
                return p
        return None

    try:
        victim = _wait(lambda: _running(tmp_path, at, lambda t: whose(t) is not None), procs, log)
        killed = time.time()
        dead = None
        if victim is not None:
            time.sleep(0.0 if seed == 2 else rng.uniform(0.0, 0.3))  # before the trial ends
            dead = whose(victim)
            assert dead is not None
            killed = time.time()
            _kill(dead)
            assert dead.wait(timeout=30) != 0
        for p in procs:
            if p is not dead:
                assert p.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
                p.wait()
    scenario = "nas worker on PostgreSQL" + (", own PID namespace" if host == "other" else "")
    _check(tmp_path, scenario, seed, killed)
    trials = nas.load(str(tmp_path / RUN)).study().get_trials(deepcopy=False)
    if seed == 2:  # the rest was running: the victim was mid-trial, as meant
        assert victim is not None and trials[victim.number].state == TrialState.FAIL
    # (seeds 0-1 kill at a random moment, which may fall after the victim's trial ended)
    why = "worker process died" if host == "same" else "worker lost (no heartbeat)"
    assert {t.user_attrs["retry_reason"] for t in trials if "retry_of" in t.user_attrs} <= {why}


def _ray_experiment(tmp_path: Path, address: str) -> None:
    experiment(
        tmp_path,
        train__epochs=EPOCHS,
        search__trials=TRIALS,
        search__workers=2,
        search__backend="ray",
        search__address=address,
    )


RAY_RUN = ("run", "exp.yaml", "--no-export", "-q")


@FAULTS
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ray_driver_killed_at_a_random_moment_then_rerun(
    ray_two_nodes: RayCluster, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    at = rng.randint(0, TRIALS - 2)
    _ray_experiment(tmp_path, ray_two_nodes.address)
    log = tmp_path / "run.log"
    first = _nas(tmp_path, *RAY_RUN, env=RAY_ENV, log=log)
    try:
        _wait(lambda: _running(tmp_path, at, lambda t: True), [first], log)
        time.sleep(rng.uniform(0.0, 1.0))
        killed = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    again = _nas(tmp_path, *RAY_RUN, env=RAY_ENV, log=log)
    assert again.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    for noise in ("Traceback", "is not acceptable", "Failed to fetch metrics"):
        assert noise not in text, text[-3000:]
    _check(tmp_path, "Ray driver", seed, killed)


@pytest.mark.parametrize(
    ("target", "seed"),
    [
        ("worker process", 0),  # in the default suite
        pytest.param("worker process", 1, marks=FAULTS),
        pytest.param("worker node", 0, marks=FAULTS),
        pytest.param("worker node", 1, marks=FAULTS),
    ],
)
def test_a_ray_worker_killed_mid_trial(
    ray_two_nodes: RayCluster, tmp_path: Path, seed: int, target: str
) -> None:
    """The worker node (its raylet and every Ray worker on it) or the one Ray worker process
    running a trial on it, killed at a random moment of the trial."""
    rng = random.Random(seed)
    at = rng.randint(0, TRIALS - 2)
    _ray_experiment(tmp_path, ray_two_nodes.address)
    log = tmp_path / "run.log"
    proc = _nas(tmp_path, *RAY_RUN, env=RAY_ENV, log=log)
    try:
        victim = _wait(
            lambda: _running(tmp_path, at, lambda t: t.user_attrs.get("ray_node") == WORKER),
            [proc],
            log,
        )
        assert victim is not None, "no trial ran on the worker node"
        time.sleep(rng.uniform(0.0, 1.0))
        killed = time.time()
        if target == "worker node":
            ray_two_nodes.kill_worker_node()
        else:
            os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()[-3000:]  # the run survives its worker: no re-run
    # the lost trial was retried within the one Tune run, not by a second run filling the gap
    assert [p.name for p in (tmp_path / RUN / "ray").glob("tune-*")] == ["tune-000"]
    _check(tmp_path, f"Ray {target}", seed, killed)
