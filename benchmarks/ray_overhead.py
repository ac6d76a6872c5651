"""What the Ray backend costs: per-trial overhead on fresh vs reused actors, a Tune run's start,
and how long a trial lost with its Ray worker (process or whole node) takes to be trained again.

    python benchmarks/ray_overhead.py [--trials 40]

Runs on a private 2-node Ray cluster on loopback (head 127.0.0.2, worker 127.0.0.3, 1 CPU each,
``tests/clusters.py``), the driver in this process, 2 trials at a time:

1. tiny trials (digits MLP, 1 epoch: ~0.1 s, past the chance floor), ``reuse_actors`` on and off:
   overhead per trial = (2 x wall - trials' own work) / trials, wall from the first trial's start
   to the last one's end; the Tune run start = the first trial's start minus the moment the
   driver launched the Tune run;
2. trials of ~1-2 s (80 epochs), a Ray worker process SIGKILLed mid-trial, then in another run
   the worker node killed (its raylet and workers): seconds from the kill to the retry's start
   (same params, ``retry_of``) and to its end.

Writes benchmarks/results/ray_overhead.json and ray_overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _md import states, table  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as the cluster's processes

EXPERIMENT: dict[str, Any] = {
    "name": "ray-overhead",
    "data": {"name": "digits"},
    "space": {"name": "mlp", "args": {"max_depth": 3, "widths": [8, 16, 24, 32, 48, 64]}},
    "train": {"epochs": 1, "batch_size": 32},
    "objectives": {"accuracy": "maximize", "params": "minimize"},
}


def _run(address: str, tmp: Path, name: str, search: dict[str, Any], train: dict[str, Any]
         ) -> tuple[Any, list[float]]:  # fmt: skip
    """``nas.run`` with the Ray backend; returns the run and when each Tune run was launched."""
    import nas
    from nas.search import _ray

    exp = dict(EXPERIMENT, name=name, train=train)
    exp["search"] = {"workers": 2, "sampler": "tpe", "backend": "ray", "address": address,
                     **search}  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    launched: list[float] = []
    fit = _ray._fit

    def timed(*args: Any, **kwargs: Any) -> bool:
        launched.append(time.time())
        return fit(*args, **kwargs)

    _ray._fit = timed
    try:
        return nas.run(str(path), out=tmp / name, progress=False), launched
    finally:
        _ray._fit = fit


def overhead(address: str, tmp: Path, trials: int, reuse: bool) -> dict[str, float]:
    from optuna.trial import TrialState

    from nas.search import _ray

    _ray.REUSE_ACTORS = reuse
    try:
        name = f"tiny-{'reused' if reuse else 'fresh'}"
        run, launched = _run(address, tmp, name, {"trials": trials}, EXPERIMENT["train"])
    finally:
        _ray.REUSE_ACTORS = True
    done = run.study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    wall = (last - first).total_seconds()
    work = sum(t.user_attrs["eval_seconds"] + t.user_attrs["sample_seconds"] for t in done)
    return {
        "trials": len(done),
        "wall_s": round(wall, 3),
        "work_s": round(work, 3),
        "overhead_s_per_trial": round((2 * wall - work) / len(done), 3),
        "tune_run_start_s": round(first.timestamp() - launched[0], 2),
    }


def lost_trial(cluster: Any, tmp: Path, node: bool) -> dict[str, Any]:
    """Kill a Ray worker process (or the worker node) mid-trial; time the retry."""
    from optuna.trial import TrialState

    import nas
    from tests.clusters import WORKER

    name = f"lost-{'node' if node else 'process'}"
    killed: dict[str, Any] = {}

    def killer() -> None:
        end = time.time() + 300
        while time.time() < end and not killed:
            time.sleep(0.1)
            try:
                trials = nas.load(str(tmp / name)).study().get_trials(deepcopy=False)
            except Exception:
                continue
            if sum(t.state == TrialState.COMPLETE for t in trials) < 2:
                continue
            for t in trials:
                if t.state == TrialState.RUNNING and t.user_attrs.get("ray_node") == WORKER:
                    time.sleep(0.3)  # mid-trial
                    killed.update(at=time.time(), trial=t.number)
                    if node:
                        cluster.kill_worker_node()
                    else:
                        os.kill(t.user_attrs["worker"]["pid"], signal.SIGKILL)
                    return

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run, _ = _run(cluster.address, tmp, name, {"trials": 8}, {"epochs": 80, "batch_size": 64})
    thread.join()
    if node:
        cluster.start_worker_node()
    trials = run.study().get_trials(deepcopy=False)
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed["trial"]]
    assert retry.state == TrialState.COMPLETE, retry.state
    by = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    return {
        "killed": "worker node" if node else "Ray worker process",
        "retry_started_s": round(retry.datetime_start.timestamp() - killed["at"], 2),
        "retry_done_s": round(retry.datetime_complete.timestamp() - killed["at"], 2),
        "retry_trained_s": round(retry.user_attrs["eval_seconds"], 2),
        "states": {k: v for k, v in by.items() if v},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args()
    if args.render:
        render(json.loads((ROOT / "benchmarks" / "results" / "ray_overhead.json").read_text()))
        return
    from tests.clusters import ray_cluster

    with ray_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        rows = {
            "reused actors": overhead(cluster.address, Path(tmp), args.trials, True),
            "fresh actor per trial": overhead(cluster.address, Path(tmp), args.trials, False),
        }
        lost = [lost_trial(cluster, Path(tmp), node) for node in (False, True)]
        import ray

        ray.shutdown()  # before the cluster goes: a driver left connected aborts the process
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/ray_overhead.py"
        + (f" --trials {args.trials}" if args.trials != 40 else ""),
        "overhead": rows,
        "lost_trial": lost,
    }
    res = ROOT / "benchmarks" / "results"
    (res / "ray_overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    render(out)


def render(out: dict[str, Any]) -> None:
    """Write ray_overhead.md from the measured record (``--render``: from the committed JSON)."""
    rows, lost = out["overhead"], out["lost_trial"]
    md = [
        f"# Ray backend overhead ({out['date']}, {out['machine']})",
        "",
        f"`{out['command']}`: a 2-node Ray cluster on loopback (1 CPU per node), 2 trials at a "
        "time, the driver in the benchmark process.",
        "",
    ]
    md += table(
        ["actors", "trials", "wall s", "trials' own work s", "overhead s/trial",
         "Tune run start s"],
        [[k, r["trials"], r["wall_s"], r["work_s"], r["overhead_s_per_trial"],
          r["tune_run_start_s"]] for k, r in rows.items()],
    )  # fmt: skip
    md += [
        "",
        "Overhead per trial = (2 x wall - trials' own work) / trials; the Tune run start is from "
        "launching the Tune run to the first trial's start (connecting, the searcher, the first "
        "actor). A fresh actor is a new worker process: it imports torch and builds the problem "
        "(loads the data) before its trial, and the trial's own work is slower too (first calls "
        "into torch). `reuse_actors` (the default) pays that once per worker.",
        "",
        "A trial lost mid-trial (8 trials of ~1-2 s, killed after 2 completed):",
        "",
    ]
    md += table(
        ["killed", "retry starts after s", "retry done after s", "retry's training s",
         "trials by state"],
        [[r["killed"], r["retry_started_s"], r["retry_done_s"], r["retry_trained_s"],
          states(r["states"])] for r in lost],
    )  # fmt: skip
    md += [
        "",
        "The retry is the same Tune trial, retried by Tune on a live worker (`retry_of` names the "
        "lost trial, which is FAIL); a killed node is noticed when its raylet stops answering.",
    ]
    res = ROOT / "benchmarks" / "results"
    (res / "ray_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
