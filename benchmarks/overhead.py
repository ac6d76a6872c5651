"""Engine overhead per trial on the embedded default (journal file in the run folder).

Overhead = wall time not spent inside a trial's own work (building the candidate, measuring it,
training, evaluating: the ``eval_seconds`` each trial records). It is what the engine adds: the
file lock, ask/tell on the journal storage, the sampler, progress, saving weights is *included*
in eval_seconds (it is trial work). A tiny trial (digits, 20 training steps: past the chance
floor) keeps the ratio honest. The space holds 4,608 MLPs (3-4 layers), so samplers rarely
repeat one; a repeat is rejected untrained and its time counts as overhead (``rejected``).

    python benchmarks/overhead.py [--trials 200]

The engine's own overhead is measured with Optuna's samplers; ``auto`` spends more on purpose
(drawing and scoring candidates to save trainings), reported in its own column.

Writes benchmarks/results/overhead.json and overhead.md. Per-worker overhead with W workers is
(W * wall - sum(eval_seconds)) / trials, wall measured from the first trial's start to the last
trial's end (process start-up is reported separately).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENT = {
    "name": "overhead",
    "data": {"name": "digits"},
    "space": {
        "name": "mlp",
        "args": {"min_depth": 3, "max_depth": 4, "widths": [8, 12, 16, 24, 32, 48, 64, 96]},
    },
    "train": {"steps": 20, "batch_size": 32},
    "objectives": {"accuracy": "maximize", "params": "minimize"},
}


def measure(workers: int, trials: int, sampler: str) -> dict[str, float]:
    from optuna.trial import TrialState

    import nas

    with tempfile.TemporaryDirectory() as tmp:
        exp = dict(EXPERIMENT, search={"trials": trials, "workers": workers, "sampler": sampler})
        path = Path(tmp) / "exp.yaml"
        path.write_text(yaml.safe_dump(exp))
        t0 = time.perf_counter()
        run = nas.run(str(path), out=Path(tmp) / "run", progress=False)
        total = time.perf_counter() - t0
        done = run.study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        rejected = len(run.study().get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        first = min(t.datetime_start for t in done)
        last = max(t.datetime_complete for t in done)
        wall = (last - first).total_seconds()
        work = sum(t.user_attrs["eval_seconds"] for t in done)
        sampling = sum(t.user_attrs["sample_seconds"] for t in done)
        proposing = [
            t.user_attrs["proposal"]["seconds"] for t in done if "proposal" in t.user_attrs
        ]

    overhead = (workers * wall - work) / len(done)
    with_sampling = (workers * wall - work + sampling) / len(done)
    return {
        "workers": workers,
        "sampler": sampler,
        "trials": len(done),
        "rejected": rejected,
        "wall_s": round(wall, 3),
        "trial_work_s": round(work, 3),
        "total_incl_startup_s": round(total, 3),
        "overhead_ms_per_trial": round(overhead * 1e3, 2),
        "overhead_incl_sampling_ms_per_trial": round(with_sampling * 1e3, 2),
        "proposal_ms_per_trial": round(1e3 * sum(proposing) / len(done), 1) if proposing else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    args = ap.parse_args()
    rows = [
        measure(w, args.trials, s)
        for w, s in ((1, "tpe"), (1, "random"), (2, "tpe"), (2, "random"), (1, "auto"))
    ]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": f"python benchmarks/overhead.py --trials {args.trials}",
        "machine": f"{platform.machine()}, {platform.python_version()}, 2 cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "overhead.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Engine overhead per trial ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        "| workers | sampler | trials | rejected | wall s | trial work s | overhead ms/trial "
        "| incl. sampling + build ms/trial | of which auto's proposal ms/trial |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['workers']} | {r['sampler']} | {r['trials']} | {r['rejected']} | {r['wall_s']} | "
        f"{r['trial_work_s']} | {r['overhead_ms_per_trial']} | "
        f"{r['overhead_incl_sampling_ms_per_trial']} | {r['proposal_ms_per_trial'] or '-'} |"
        for r in rows
    ]
    (out / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
