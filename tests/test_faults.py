"""Faults at the worst moment, as users meet them: SIGKILL of a worker or of the driver at random
moments (several seeds), a study file torn mid-record, a record written onto a torn one, a full
disk, a run folder on read-only media. The CLI runs from a temporary working folder with the
default relative run folder.

Each scenario asserts: 0 completed trials lost (same values as before the fault), 0 candidates
trained twice (no two COMPLETE trials share their params), and the run completes by re-running
the same command (COMPLETE == requested, nothing RUNNING or WAITING left).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT, experiment

TRIALS = 8
RUN = Path("runs") / "digits-quick"


def _nas(cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    from nas.search._journal import ReadOnlyJournal

    storage = optuna.storages.JournalStorage(ReadOnlyJournal(run / "study.journal"))
    return optuna.load_study(study_name="nas", storage=storage).get_trials(deepcopy=False)


def _complete(run: Path) -> dict[int, tuple[float, ...]]:
    return {t.number: tuple(t.values) for t in _trials(run) if t.state == TrialState.COMPLETE}


def _check_done(run: Path, before: dict[int, tuple[float, ...]]) -> None:
    trials = _trials(run)
    states = [t.state for t in trials]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == TRIALS, " ".join(f"{t.number}:{t.state.name}" for t in trials)
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(keys) == len(set(keys)), "a candidate was trained twice"
    now = {t.number: tuple(t.values) for t in done}
    lost = {n: v for n, v in before.items() if now.get(n) != v}
    assert not lost, f"completed trials lost: {lost}"
    for t in done:
        assert (run / "weights" / f"trial-{t.number:05d}.safetensors").is_file()


@pytest.mark.parametrize(
    "seed",
    [0, 3, pytest.param(1, marks=pytest.mark.faults), pytest.param(2, marks=pytest.mark.faults)],
)
def test_sigkill_at_a_random_moment_then_rerun(tmp_path: Path, seed: int) -> None:
    """Seeds 0-1 kill the worker of a running trial at a random moment, 2-3 the whole `nas run`
    (driver and workers), seed 3 within the last trial. (The default suite runs 0 and 3 to stay
    near 15 minutes, `make test-faults` 1 and 2; SIGTERM of the driver is tested below.)"""
    rng = random.Random(seed)
    proc = _start_run(tmp_path, stderr=subprocess.STDOUT)
    run = tmp_path / RUN
    at = TRIALS - 1 if seed == 3 else rng.randint(1, TRIALS - 2)  # completed trials at the kill
    delay = rng.uniform(0.0, 1.5)
    victim = _wait(lambda: _running_after(run, at), proc)
    time.sleep(delay)
    if seed < 2:
        os.kill(victim, signal.SIGKILL)
        log, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, log
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = _complete(run)
    again = _nas(tmp_path, "run", "exp.yaml", "--workers", "2", "-q")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    _check_done(run, before)


def _start_run(cwd: Path, *, stderr: int) -> subprocess.Popen[str]:
    """`nas run exp.yaml --workers 2` in the background (~1-2 s per trial: time to kill it
    mid-trial), in its own session; the experiment is written to ``cwd``."""
    experiment(cwd, train__epochs=25, search__trials=TRIALS)
    return subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "run", "exp.yaml", "--workers", "2", "-q"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def _wait(
    pred: Callable[[], int | None], proc: subprocess.Popen[str], timeout: float = 300.0
) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended first: {proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def _running_after(run: Path, n_complete: int) -> int | None:
    """The pid of a worker running a trial once ``n_complete`` trials are complete."""
    if not (run / "study.journal").is_file():
        return None
    try:
        trials = _trials(run)
    except Exception:
        return None
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
    return running[0].user_attrs["worker"]["pid"] if done >= n_complete and running else None


@pytest.fixture(scope="module")
def finished_cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-quick run by the CLI in its own process (a trial of an in-process run would name
    the live test process as its worker, and a torn record would leave it RUNNING for good)."""
    cwd = tmp_path_factory.mktemp("cli-run")
    from tests.conftest import QUICK

    r = _nas(cwd, "run", str(QUICK), "--workers", "1", "-q")
    assert r.returncode == 0, r.stderr
    return cwd / RUN


@pytest.fixture
def finished_copy(finished_cli_run: Path, tmp_path: Path) -> Iterator[Path]:
    """A working folder holding the finished digits-quick run at the default relative path."""
    shutil.copytree(finished_cli_run, tmp_path / RUN)
    yield tmp_path


def _cut(journal: Path, rng: random.Random) -> tuple[bytes, int]:
    """Cut the file in the middle of one of its last records; return it whole and the cut."""
    data = journal.read_bytes()
    starts = [i + 1 for i, b in enumerate(data) if b == ord("\n")][:-1]
    line = rng.choice(starts[len(starts) * 2 // 3 :])
    end = data.index(b"\n", line)
    cut = rng.randint(line + 1, end - 1)
    journal.write_bytes(data[:cut])
    return data, cut


@pytest.mark.parametrize("seed", [0])  # more cuts: the two tests after this one
def test_torn_study_file_is_read_then_repaired(finished_copy: Path, seed: int) -> None:
    from tests.conftest import QUICK

    cwd, run = finished_copy, finished_copy / RUN
    whole, cut = _cut(run / "study.journal", random.Random(seed))
    before = _complete(run)  # what the intact records hold
    front = _nas(cwd, "front", str(RUN))
    assert front.returncode == 0, front.stderr
    assert "warning:" in front.stderr and "torn record" in front.stderr
    assert len(front.stderr.strip().splitlines()) == 1
    assert (run / "study.journal").read_bytes() == whole[:cut]  # a read changes nothing
    again = _nas(cwd, "run", str(QUICK), "--workers", "1", "-q")
    assert again.returncode == 0, again.stderr
    assert "repaired" in again.stderr
    backups = list(run.glob("study.journal.torn-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == whole[:cut]
    _check_done(run, before)
    doctor = _nas(cwd, "doctor", str(RUN), "--no-exports")
    assert doctor.returncode == 0 and "intact" in doctor.stdout, doctor.stdout


def test_a_record_written_onto_a_torn_one_is_recovered(finished_copy: Path) -> None:
    """What earlier versions did next: the next write landed on the torn line, and from then on
    every read failed with JSONDecodeError."""
    from tests.conftest import QUICK

    cwd, run = finished_copy, finished_copy / RUN
    journal = run / "study.journal"
    whole, cut = _cut(journal, random.Random(7))
    nxt = whole.index(b"\n", cut) + 1
    following = whole[nxt : whole.index(b"\n", nxt) + 1]
    journal.write_bytes(whole[:cut] + following)  # a whole record appended onto the torn one
    front = _nas(cwd, "front", str(RUN), "--json")
    assert front.returncode == 0, front.stderr
    assert "written onto a torn one" in front.stderr
    before = _complete(run)
    assert _nas(cwd, "run", str(QUICK), "--workers", "1", "-q").returncode == 0
    _check_done(run, before)


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"needs mount (root): {r.stderr.strip()}")


def test_full_disk_mid_run_then_rerun(tmp_path: Path, mount_point: Path) -> None:
    """The disk fills during the search (weights, then the study file mid-record): one line,
    exit 2; once there is space, the same command completes the run with nothing lost."""
    _mount("-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mount_point))
    experiment(tmp_path, search__trials=TRIALS)
    out = str(mount_point / "run")
    first = _nas(tmp_path, "run", "exp.yaml", "--out", out, "--workers", "1", "-q")
    assert first.returncode == 2, first.stderr
    err = first.stderr.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "Traceback" not in first.stderr
    before = _complete(Path(out))
    assert before  # some trials completed before the disk filled
    _mount("-o", "remount,size=4m", str(mount_point))
    again = _nas(tmp_path, "run", "exp.yaml", "--out", out, "--workers", "1", "-q")
    assert again.returncode == 0, again.stderr
    _check_done(Path(out), before)


def test_read_only_run_folder_reads(finished_copy: Path, mount_point: Path) -> None:
    cwd = finished_copy
    src = cwd / RUN
    _mount("--bind", str(src), str(mount_point))
    _mount("-o", "remount,bind,ro", str(mount_point))
    ro = str(mount_point)
    digest = {p.name: p.read_bytes() for p in mount_point.iterdir() if p.is_file()}
    front = _nas(cwd, "front", ro)
    assert front.returncode == 0, front.stderr
    assert "plot: not written" in front.stdout
    assert _nas(cwd, "front", ro, "--json").returncode == 0
    exported = _nas(cwd, "export", ro, "--to", "out", "--best", "accuracy", "-q")
    assert exported.returncode == 0, exported.stderr
    assert list((cwd / "out").glob("trial-*/model.onnx"))
    report = _nas(cwd, "report", ro, "--to", "r.html")
    assert report.returncode == 0, report.stderr
    doctor = _nas(cwd, "doctor", ro, "--check", "--no-exports")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    refused = _nas(cwd, "export", ro, "-q")  # the default exports/ is inside the folder
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "read-only" in refused.stderr and "--to" in refused.stderr
    assert {p.name: p.read_bytes() for p in mount_point.iterdir() if p.is_file()} == digest


def test_doctor_checks_and_repairs(finished_copy: Path) -> None:
    cwd, run = finished_copy, finished_copy / RUN
    assert _nas(cwd, "export", str(RUN), "--best", "accuracy", "-q").returncode == 0
    healthy = _nas(cwd, "doctor", str(RUN))
    assert healthy.returncode == 0, healthy.stdout
    assert "problem" not in healthy.stdout and "exports: all 1 load" in healthy.stdout
    # damage: a torn study file (the last trial's completion lost: it stays RUNNING, its worker
    # long dead), a temporary file of a killed writer, an export whose model was overwritten
    journal = run / "study.journal"
    journal.write_bytes(journal.read_bytes()[:-25])
    (run / "weights" / ".trial-00099.safetensors.4242.tmp").write_bytes(b"half")
    (onnx,) = run.glob("exports/trial-*/model.onnx")
    onnx.write_bytes(b"not onnx")
    check = _nas(cwd, "doctor", str(RUN), "--check")
    assert check.returncode == 1
    problems = [ln for ln in check.stdout.splitlines() if ln.startswith("problem")]
    assert len(problems) == 4, check.stdout  # study file, running trial, temp file, export
    assert (run / "weights" / ".trial-00099.safetensors.4242.tmp").exists()  # --check: no change
    fixed = _nas(cwd, "doctor", str(RUN))
    assert fixed.returncode == 1  # the export is left for the user to redo
    repaired = [ln for ln in fixed.stdout.splitlines() if ln.startswith("repaired")]
    assert len(repaired) == 3, fixed.stdout
    assert "exports: 1 of 1 do not verify" in fixed.stdout
    assert list(run.glob("study.journal.torn-*"))
    assert not (run / "weights" / ".trial-00099.safetensors.4242.tmp").exists()
    # the same search command trains the failed trial's params again and completes
    from tests.conftest import QUICK

    assert _nas(cwd, "run", str(QUICK), "--workers", "1", "-q").returncode == 0
    _check_done(run, {})
    shutil.rmtree(onnx.parent)
    assert _nas(cwd, "doctor", str(RUN)).returncode == 0


def test_a_lock_left_by_a_writer_killed_mid_record(finished_copy: Path) -> None:
    """SIGKILL during an append leaves Optuna's lock file and a torn record: the next run must
    not wait for ever nor append onto the torn line."""
    from tests.conftest import QUICK

    cwd, run = finished_copy, finished_copy / RUN
    journal = run / "study.journal"
    _cut(journal, random.Random(3))
    before = _complete(run)
    lock = Path(f"{journal}.lock")
    os.symlink(f"{journal}.lock-target-of-a-dead-process", lock)
    old = time.time() - 120
    os.utime(lock, (old, old), follow_symlinks=False)
    again = _nas(cwd, "run", str(QUICK), "--workers", "1", "-q")
    assert again.returncode == 0, again.stderr
    assert "repaired" in again.stderr and not os.path.lexists(lock)
    _check_done(run, before)


def test_sigterm_stops_the_workers_too(tmp_path: Path) -> None:
    """`kill PID`, a scheduler's time limit, `docker stop`: the run stops as on Ctrl-C (its
    workers with it, none left training on its own), says how to resume, exits 143."""
    proc = _start_run(tmp_path, stderr=subprocess.PIPE)
    run = tmp_path / RUN
    worker = _wait(lambda: _running_after(run, 2), proc)
    os.kill(proc.pid, signal.SIGTERM)  # the driver only
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "re-run the same command" in err
    assert "Traceback" not in err
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the worker was stopped with its driver
    before = _complete(run)
    assert not [t for t in _trials(run) if t.state == TrialState.RUNNING]
    again = _nas(tmp_path, "run", "exp.yaml", "--workers", "2", "-q")
    assert again.returncode == 0, again.stderr
    _check_done(run, before)
