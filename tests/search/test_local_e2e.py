"""End to end on the embedded default: 2 worker processes, SIGKILL, resume, front, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.search._problem import fully_drawn
from tests.conftest import QUICK, ROOT, experiment

TRIALS = 10


def _experiment(tmp_path: Path) -> Path:
    # ~2 s per trial: a kill lands mid-trial even on a busy machine
    return experiment(tmp_path, train__epochs=50, search__trials=TRIALS)


def _study(run_dir: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))
    )
    return optuna.load_study(study_name="nas", storage=storage)


def _start(exp: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "run", str(exp), "--out", str(out), "--workers", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(pred, timeout: float = 120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _running_after(out: Path, n_complete: int):
    if not (out / "study.journal").exists():
        return None
    try:
        trials = _study(out).get_trials(deepcopy=False)
    except Exception:
        return None
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
    return running[0] if len(done) >= n_complete and running else None


def _check_complete(out: Path, before: dict[int, tuple] | None = None) -> list:
    trials = _study(out).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for t in complete:  # every completed trial keeps its weights
        assert (out / "weights" / f"trial-{t.number:05d}.safetensors").is_file()
    if before:
        now = {t.number: tuple(t.values) for t in complete}
        assert all(now.get(n) == v for n, v in before.items()), "a completed trial was lost"
    return trials


def test_worker_sigkill_is_retried_and_run_completes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(_experiment(tmp_path), out)
    victim = _wait_for(lambda: _running_after(out, 2))
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "died with SIGKILL" in log
    trials = _check_complete(out)
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].params == victim.params
    assert retry[0].state == TrialState.COMPLETE


def test_whole_run_killed_then_resumed(tmp_path: Path) -> None:
    exp, out = _experiment(tmp_path), tmp_path / "run"
    proc = _start(exp, out)
    _wait_for(lambda: _running_after(out, 3))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {
        t.number: tuple(t.values)
        for t in _study(out).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    assert 3 <= len(before) < TRIALS
    stale = [t.number for t in _study(out).get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    assert stale  # killed mid-trial
    resumed = _start(exp, out)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "resuming" in log
    trials = _check_complete(out, before)
    for n in stale:
        assert next(t for t in trials if t.number == n).state == TrialState.FAIL
        assert any(t.user_attrs.get("retry_of") == n for t in trials)
    # a third run of the same command has nothing left to do
    again = subprocess.run(
        [sys.executable, "-m", "nas.cli", "run", str(exp), "--out", str(out), "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert len(_check_complete(out, before)) == len(trials)

    # front and export of the resumed run
    exported = subprocess.run(
        [sys.executable, "-m", "nas.cli", "export", str(out), "--to", str(tmp_path / "exp"), "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    front = json.loads((out / "front.json").read_text())
    dirs = sorted((tmp_path / "exp").glob("trial-*"))
    assert len(dirs) == len(front["front"]) >= 1
    for d in dirs:
        assert {f.name for f in d.iterdir()} >= {
            "model.onnx",
            "weights.safetensors",
            "config.json",
            "metrics.json",
        }
        m = json.loads((d / "metrics.json").read_text())
        assert abs(m["exported"]["test_accuracy"] - m["search"]["test_accuracy"]) <= 0.005


@pytest.mark.parametrize("workers", [2])
def test_quick_experiment_two_workers_exact_count(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "run",
            str(QUICK),
            "--out",
            str(out),
            "--workers",
            str(workers),
            "--trials",
            str(TRIALS),
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _check_complete(out)
    assert (out / "pareto.png").is_file() and (out / "front.json").is_file()


def test_a_joined_worker_killed_mid_trial_is_retried_by_the_run(tmp_path: Path) -> None:
    """`nas run` and a `nas worker` on one host share the default journal study; the worker is
    SIGKILLed mid-trial. The run sees that process gone at its next ask, fails the trial and
    trains it again. (Before: with no heartbeat on a journal, the run went on to the end, found
    the killed trial "still running on other workers" and exited 0 one short.)"""
    n = 6
    experiment(tmp_path, train__epochs=50, search__trials=n, search__workers=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "runs" / "digits-quick"
    args = [sys.executable, "-m", "nas.cli"]
    wlog = tmp_path / "worker.log"
    with open(wlog, "w") as f:  # started first: it is polling when the run creates the study
        joined = subprocess.Popen(
            [*args, "worker", str(run.relative_to(tmp_path)), "--wait", "300"], cwd=tmp_path,
            env=env, stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_for(lambda: "waiting up to" in wlog.read_text(), timeout=300)
    first = subprocess.Popen(
        [*args, "run", "exp.yaml", "--no-export", "-q"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def victims() -> object:
        for t in _study(run).get_trials(deepcopy=False) if (run / "study.journal").exists() else []:
            w = t.user_attrs.get("worker", {})
            if t.state == TrialState.RUNNING and w.get("pid") == joined.pid and fully_drawn(t):
                return t  # training (a trial lost while drawing is not retried)
        if first.poll() is not None or joined.poll() is not None:
            raise AssertionError(f"a process ended before the kill:\n{wlog.read_text()}")
        return None

    try:
        victim = _wait_for(victims, timeout=300)
        os.kill(joined.pid, signal.SIGKILL)
        joined.wait()
        try:
            log, _ = first.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # say where it hangs
            first.kill()
            log, _ = first.communicate()
            states = [(t.number, t.state.name) for t in _study(run).get_trials(deepcopy=False)]
            lock = run / "study.journal.lock"
            raise AssertionError(f"hangs; {states}; lock {lock.is_symlink()}\n{log}") from None
        assert first.returncode == 0, log
    finally:
        for p in (first, joined):
            if p.poll() is None:
                p.kill()
                p.wait()
    trials = _study(run).get_trials(deepcopy=False)
    by = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by[TrialState.COMPLETE]) == n, [(t.number, t.state.name) for t in trials]
    assert not by[TrialState.RUNNING] and not by[TrialState.WAITING]
    killed = next(t for t in trials if t.number == victim.number)  # type: ignore[attr-defined]
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["retry_reason"] == "worker process died"
    assert "still running on other workers" not in log
