"""The Ray Tune backend on a real 2-node Ray cluster on loopback (head 127.0.0.2, worker 127.0.0.3,
auth disabled on every process), started and stopped by PID by the fixture: trials run on both
nodes; a Ray worker process SIGKILLed mid-trial is retried and the run ends with the right count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

import nas
from tests.clusters import RAY_ENV, RayCluster
from tests.conftest import ROOT, experiment


@pytest.mark.faults  # with the fault module: `make test-faults`
def test_ray_backend_runs_on_both_nodes_and_survives_a_killed_worker(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    path = experiment(
        tmp_path,
        train__epochs=40,  # a few seconds per trial: time to kill one mid-trial
        search__trials=10,
        search__workers=2,
        search__backend="ray",
        search__address=ray_cluster.address,
    )
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nas.cli", "run", str(path), "--out", str(out), "-q",
             "--no-export"],
            cwd=ROOT, env=RAY_ENV, stdout=f, stderr=f,
        )  # fmt: skip
    try:
        victim = None
        end = time.time() + 300
        while victim is None and time.time() < end and proc.poll() is None:
            time.sleep(0.2)
            if not (out / "study.journal").exists():
                continue
            trials = nas.load(str(out)).study().get_trials(deepcopy=False)
            nodes = {t.user_attrs.get("ray_node") for t in trials if t.state.is_finished()}
            if not {"127.0.0.2", "127.0.0.3"} <= nodes:
                continue  # first let both nodes finish a trial
            for t in trials:
                if t.state == TrialState.RUNNING and "ray_node" in t.user_attrs:
                    victim = t
                    break
        assert victim is not None, log.read_text()[-3000:]
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    trials = nas.load(str(out)).study().get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 10
    assert {t.user_attrs["ray_node"] for t in complete} == {"127.0.0.2", "127.0.0.3"}
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["error"] == "Ray worker lost"


def test_mo_asha_stops_trials_on_ray(ray_cluster: RayCluster, tmp_path: Path) -> None:
    path = experiment(
        tmp_path,
        train__epochs=4,
        search__trials=10,
        search__workers=2,
        search__backend="ray",
        search__address=ray_cluster.address,
        search__fidelity={"eta": 2},
    )
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "nas.cli", "run", str(path), "--out", str(out), "-q",
         "--no-export"],
        cwd=ROOT, env=RAY_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trials = nas.load(str(out)).study().get_trials()
    stopped = [t for t in trials if "stopped" in t.user_attrs]
    assert stopped, "MO-ASHA at rungs 1 and 2 epochs must stop some trials"
    assert all("ray_node" in t.user_attrs and t.user_attrs["curve"] for t in stopped)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) >= 1


@pytest.mark.faults
def test_an_interrupted_ray_run_resumes_with_tuner_restore(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    path = experiment(
        tmp_path,
        train__epochs=30,
        search__trials=8,
        search__workers=2,
        search__backend="ray",
        search__address=ray_cluster.address,
    )
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "nas.cli", "run", str(path), "--out", str(out), "-q",
            "--no-export"]  # fmt: skip
    first = subprocess.Popen(argv, cwd=ROOT, env=RAY_ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        end = time.time() + 300
        while time.time() < end and first.poll() is None:
            time.sleep(0.2)
            if (out / "study.journal").exists():
                trials = nas.load(str(out)).study().get_trials(deepcopy=False)
                if sum(t.state == TrialState.COMPLETE for t in trials) >= 2:
                    break
        assert first.poll() is None, "the run ended before it could be interrupted"
        os.kill(first.pid, signal.SIGKILL)  # the Tune driver dies mid-run
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    kept = {t.number for t in nas.load(str(out)).study().get_trials() if t.state.is_finished()}
    again = subprocess.run(argv, cwd=ROOT, env=RAY_ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((out / "ray").glob("tune-000/*.json"))) >= 1  # the restored Tune run
    trials = nas.load(str(out)).study().get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert kept <= {t.number for t in trials if t.state.is_finished()}  # nothing lost
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_duplicates_are_not_trained_again_on_ray(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """A 12-model space, 10 trials, TPE (what `auto` means on Ray), run as users do (the CLI in
    a temporary folder, default run folder): TPE re-draws models of a small space; none is
    trained twice (issue 24, item 3: 12 trials trained the same params 2-3 times)."""
    experiment(
        tmp_path,
        space={"name": "mlp", "args": {"max_depth": 2, "widths": [16, 32, 64]}},
        search__trials=10,
        search__workers=2,
        search__seed=1,  # a seed beside the seeded sampler made Ray's OptunaSearch warn
        search__backend="ray",
        search__address=ray_cluster.address,
    )
    argv = [sys.executable, "-m", "nas.cli", "run", "exp.yaml", "-q", "--no-export"]
    done = subprocess.run(
        argv, cwd=tmp_path, env=RAY_ENV, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for noise in ("is not acceptable", "has to be passed to the sampler"):
        assert noise not in done.stderr, done.stderr[-3000:]
    trials = nas.load(str(tmp_path / "runs" / "digits-quick")).study().get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 10
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == 10, "a candidate was trained twice"
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state)
        if t.state == TrialState.PRUNED:  # a repeat let through is recorded, not trained
            assert t.user_attrs["rejected"] == "duplicate of a candidate already tried"


def test_an_impossible_constraint_stops_a_ray_run_and_names_it(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Every candidate breaks a static constraint: the driver's gate ends the Tune run after
    search.max_rejections in a row and the command says which constraint, in one line."""
    experiment(
        tmp_path,
        constraints={"params": {"max": 10}},  # the smallest mlp has 1,210
        search__trials=100_000,
        search__max_rejections=8,
        search__backend="ray",
        search__address=ray_cluster.address,
    )
    argv = [sys.executable, "-m", "nas.cli", "run", "exp.yaml", "-q", "--no-export"]
    done = subprocess.run(
        argv, cwd=tmp_path, env=RAY_ENV, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "8 candidates in a row broke a hard constraint" in line
    assert "params <= 10" in line and "search.max_rejections=8" in line


def test_more_cpus_per_trial_than_any_node_has(ray_cluster: RayCluster, tmp_path: Path) -> None:
    path = experiment(
        tmp_path,
        search__backend="ray",
        search__address=ray_cluster.address,
        search__cpus_per_trial=4,
    )
    argv = [sys.executable, "-m", "nas.cli", "run", str(path), "--out", str(tmp_path / "run")]
    done = subprocess.run(argv, cwd=ROOT, env=RAY_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "cpus_per_trial=4 but the largest Ray node has 1 CPU(s)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_relative_run_folder_is_restored_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's default run folder is relative; Tune's can_restore read it as a URI with no
    scheme (pyarrow: 'URI has empty scheme'), so a killed driver's run could not resume."""
    from types import SimpleNamespace

    import optuna
    from ray import tune

    from nas.search import _ray

    class Asked(Exception):
        pass

    seen: list[str] = []

    def can_restore(path: object, *args: object, **kwargs: object) -> bool:
        seen.append(str(path))
        raise Asked

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "ray" / "tune-000").mkdir(parents=True)
    monkeypatch.setattr(tune.Tuner, "can_restore", staticmethod(can_restore))
    problem = SimpleNamespace(directions={"accuracy": "maximize"})
    sampler = optuna.samplers.RandomSampler(seed=0)
    with pytest.raises(Asked):
        _ray._fit(lambda: problem, problem, lambda: None, Path("runs/x"), 1, 1, sampler, 0, {})
    assert seen == [str(tmp_path / "runs" / "x" / "ray" / "tune-000")]
