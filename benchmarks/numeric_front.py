"""Does each numeric / sparse technique win a place on the Pareto front of a search offering it?

    python benchmarks/numeric_front.py [--trials 12] [--techniques unstructured dns ...]

For each technique, one search on MNIST 5k over the ``mlp`` space (1-2 layers of 32-300 units,
8 epochs) with that technique ``optional`` (the search may leave it out), objectives accuracy and
size_bytes, ``auto`` sampler. Reported per technique: how many front models use it, out of the
front, and the accuracy / size of the best front model that uses it. Writes
benchmarks/results/numeric_front.json and numeric_front.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nas  # noqa: E402

TECHNIQUES = {
    "unstructured": {
        "sparsity": [0.5, 0.95],
        "criterion": ["magnitude", "gradient"],
        "schedule": ["oneshot", "gradual"],
        "finetune": 2,
    },
    "dns": {"sparsity": [0.5, 0.95], "finetune": 2},
    "weight_sharing": {"bits": [2, 6], "finetune": 1},
    "deep_compression": {"sparsity": [0.8, 0.95], "bits": [3, 6], "finetune": 2},
    "binarize": {"mode": ["binary", "ternary"], "finetune": 2},
    "quantize": {"bits": [2, 8], "per_layer": True, "finetune": 1},
    "ptq": {"calibration": ["minmax", "percentile"]},
    "dfq": {},
}


def experiment(technique: str, trials: int) -> dict:
    return {
        "name": f"numeric-{technique}",
        "data": {"name": "mnist5k"},
        "space": {
            "name": "mlp",
            "args": {"min_depth": 1, "max_depth": 2, "widths": [32, 64, 100, 300]},
        },
        "train": {"epochs": 8, "batch_size": 64, "lr": 0.002},
        "compression": {technique: {**TECHNIQUES[technique], "optional": True}},
        "objectives": {"accuracy": "maximize", "size_bytes": "minimize"},
        "search": {"trials": trials, "workers": 2, "seed": 0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--techniques", nargs="+", default=list(TECHNIQUES))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tech in args.techniques:
            path = Path(tmp) / f"{tech}.yaml"
            path.write_text(yaml.safe_dump(experiment(tech, args.trials)))
            t0 = time.time()
            run = nas.run(str(path), out=Path(tmp) / tech, progress=False)
            front = run.front().front
            using = [p for p in front.points if tech in p.compression]
            best = max(using, key=lambda p: p.metrics["accuracy"]) if using else None
            rows.append(
                {
                    "technique": tech,
                    "front_models": len(front.points),
                    "front_models_using_it": len(using),
                    "feasible_trials_using_it": sum(
                        tech in p.compression for p in front.candidates
                    ),
                    "feasible_trials": len(front.candidates),
                    "best_using_it": None
                    if best is None
                    else {
                        "accuracy": best.metrics["accuracy"],
                        "size_bytes": best.metrics["size_bytes"],
                    },
                    "smallest_without": min(
                        (
                            p.metrics["size_bytes"]
                            for p in front.points
                            if tech not in p.compression
                        ),
                        default=None,
                    ),
                    "seconds": round(time.time() - t0),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python benchmarks/numeric_front.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "setup": f"MNIST 5k, mlp space (1-2 layers of 32-300 units), 8 epochs, {args.trials} "
        "trials, 2 workers, auto sampler, objectives accuracy (val) and size_bytes; the "
        "technique optional",
    }
    out = ROOT / "benchmarks" / "results"
    (out / "numeric_front.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Numeric and sparse techniques on the Pareto front ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        meta["setup"] + ".",
        "",
        "| technique | front models using it | feasible trials using it | best front model "
        "using it (val acc, bytes) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        b = r["best_using_it"]
        best = "-" if b is None else f"{b['accuracy']:.4f}, {b['size_bytes']:.0f}"
        lines.append(
            f"| {r['technique']} | {r['front_models_using_it']} of {r['front_models']} | "
            f"{r['feasible_trials_using_it']} of {r['feasible_trials']} | {best} |"
        )
    (out / "numeric_front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
