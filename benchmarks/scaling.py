"""Throughput of the drivers: local workers (1 vs 2) and the Ray Tune backend's per-trial overhead.

    python benchmarks/scaling.py

1. Local: the same digits experiment (trials of about a second, sampler TPE so both runs do the
   same sampling work) with 1 and then 2 worker processes on this 2-core machine; trials per
   minute between the first trial's start and the last one's end.
2. Ray: tiny trials (20 training steps) on a local Ray with ``reuse_actors``; per-trial overhead =
   (workers x wall - the trials' own work) / trials, as in ``benchmarks/overhead.py``.

Writes benchmarks/results/scaling.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = {
    "name": "scaling",
    "data": {"name": "digits"},
    "space": {"name": "mlp", "args": {"max_depth": 3, "widths": [16, 32, 64, 128]}},
    "objectives": {"accuracy": "maximize", "params": "minimize"},
}


def run(exp: dict, tmp: Path, tag: str) -> dict[str, float]:
    import nas

    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp / tag
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "nas.cli", "run", str(path), "--out", str(out), "-q"]
    subprocess.run([*cmd, "--no-export"], cwd=ROOT, env=env, check=True, capture_output=True)
    trials = [t for t in nas.load(str(out)).study().get_trials() if t.state.name == "COMPLETE"]
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    wall = (last - first).total_seconds()
    work = sum(t.user_attrs["eval_seconds"] for t in trials)
    return {"trials": len(trials), "wall_s": round(wall, 2), "work_s": round(work, 2)}


def main() -> None:
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for workers in (1, 2):
            exp = dict(
                BASE,
                train={"epochs": 80, "batch_size": 64},
                search={"trials": 24, "workers": workers, "sampler": "tpe", "seed": 0},
            )
            r = run(exp, tmp, f"local{workers}")
            r["trials_per_min"] = round(60 * r["trials"] / r["wall_s"], 1)
            rows[f"local, {workers} worker(s)"] = r
        exp = dict(
            BASE,
            train={"steps": 20, "batch_size": 32},
            search={"trials": 60, "workers": 2, "sampler": "tpe", "backend": "ray"},
        )
        r = run(exp, tmp, "ray")
        r["overhead_s_per_trial"] = round((2 * r["wall_s"] - r["work_s"]) / r["trials"], 3)
        rows["ray, 2 concurrent, tiny trials"] = r
    speedup = (
        rows["local, 2 worker(s)"]["trials_per_min"] / rows["local, 1 worker(s)"]["trials_per_min"]
    )
    meta = {
        "command": "python benchmarks/scaling.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "local_speedup_2_vs_1": round(speedup, 2),
    }
    out = ROOT / "benchmarks" / "results"
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Driver throughput ({meta['date']}, {meta['machine']})",
        "",
        f"`{meta['command']}`",
        "",
        "| run | trials | wall s | trials' own work s | trials/min | overhead s/trial |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['trials']} | {r['wall_s']} | {r['work_s']} | "
            f"{r.get('trials_per_min', '-')} | {r.get('overhead_s_per_trial', '-')} |"
        )
    lines += ["", f"2 local workers: **{speedup:.2f} x** the trials per minute of 1 worker."]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
