"""`nas report` on the demo run: file size, build time, and rendering in headless chromium.

    make demo                                        # the Fashion-MNIST demo run, if not there yet
    python benchmarks/report.py [--run runs/fashion-mnist] [--synthetic-trials 3000]

Writes benchmarks/results/report.json and report_screenshot.png (the page as chromium drew it,
offline: the report has no external resource). Acceptance (issue 7): every plot drawn, < 5 MB.
It also times the report of a synthetic run with thousands of completed trials (made-up metrics
added to a digits run's study), to show how size and build time grow with the trial count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.html_browser import browser_check  # noqa: E402
from nas.html_report import write_report  # noqa: E402
from nas.runs import Run, prepare  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LIMIT_BYTES = 5_000_000


def demo_run(run_dir: Path) -> dict:
    run = Run.open(run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        t0 = time.perf_counter()
        write_report(run, html)
        seconds = time.perf_counter() - t0
        seen = browser_check(html, RESULTS / "report_screenshot.png")
        size = html.stat().st_size
    front = run.front().front
    return {
        "run": run.exp.name,
        "completed_trials": len(front.candidates) + len(front.infeasible),
        "front_models": len(front.points),
        "report_bytes": size,
        "build_seconds": round(seconds, 2),
        **seen,
        "every_plot_drawn": seen["plots"] == seen["plots_drawn"] > 0,
        "under_5_MB": size < LIMIT_BYTES,
    }


def synthetic(n: int) -> dict:
    """Size and build time of the report of a run with ``n`` made-up completed trials."""
    rng = np.random.default_rng(0)
    dists = {
        "depth": IntDistribution(1, 3),
        "width_0": CategoricalDistribution([16, 32, 64]),
        "width_1": CategoricalDistribution([16, 32, 64]),
        "quantize.bits": IntDistribution(4, 8),
        "slimming.ratio": FloatDistribution(0.0, 0.6),
    }
    trials = []
    for _ in range(n):
        params = {
            "depth": int(rng.integers(1, 4)),
            "width_0": int(rng.choice([16, 32, 64])),
            "width_1": int(rng.choice([16, 32, 64])),
            "quantize.bits": int(rng.integers(4, 9)),
            "slimming.ratio": float(rng.uniform(0, 0.6)),
        }
        size = float(rng.uniform(1e3, 1e5))
        acc = float(min(0.99, 0.5 + 0.1 * np.log10(size) + rng.normal(0, 0.05)))
        compression = {
            "quantize": {"bits": params["quantize.bits"]},
            "slimming": {"ratio": params["slimming.ratio"]},
        }
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                values=[acc, size],
                user_attrs={
                    "metrics": {"accuracy": acc, "params": size, "test_accuracy": acc},
                    "compression": compression,
                },
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare(ROOT / "experiments" / "digits_quick.yaml", out=Path(tmp) / "run")
        run.study(writable=True).add_trials(trials)
        html = Path(tmp) / "report.html"
        t0 = time.perf_counter()
        write_report(run, html)
        return {
            "trials": n,
            "report_bytes": html.stat().st_size,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "fashion-mnist")
    ap.add_argument("--synthetic-trials", type=int, default=3000, help="0 skips it")
    args = ap.parse_args()
    result = {
        "command": f"python benchmarks/report.py --run {os.path.relpath(args.run, ROOT)} "
        f"--synthetic-trials {args.synthetic_trials}",
        **demo_run(args.run),
    }
    if args.synthetic_trials > 0:
        result["synthetic"] = synthetic(args.synthetic_trials)
    (RESULTS / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not (result["every_plot_drawn"] and result["under_5_MB"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
