"""Time the default demo step by step: the `make demo` targets, one at a time.

    python benchmarks/demo.py [--out RUN] [--setup]

Runs ``make demo-search``, ``demo-finalize``, ``demo-export`` and ``demo-compare`` (the targets
``make demo`` runs after its set-up; see the Makefile) on a fresh run folder and times each;
``--setup`` times ``make setup-demo`` first: on a fresh clone that is the whole set-up (venv, torch,
the project, the dataset), so this script needs only the standard library to start. The machine's
load (``/proc/loadavg``) is recorded before and after: compare timings taken on a quiet machine.

Writes benchmarks/results/demo.json and demo.md: wall time of each step, the front, the exported
models (test accuracy of the ONNX files, multiply-adds, the budget they were finalized with) and
the comparison with the hand-designed references (``RUN/compare.json``, the demo's last lines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("demo-search", "demo-finalize", "demo-export", "demo-compare")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _make(target: str, run_dir: Path, log: Path) -> float:
    """``make TARGET DEMO_RUN=run_dir``, its output appended to ``log``; wall seconds."""
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ make {target}\n")
        out.flush()
        done = subprocess.run(
            ["make", "--no-print-directory", target, f"DEMO_RUN={run_dir}"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        sys.exit(f"{tail}\nerror: `make {target}` failed (exit {done.returncode}); output above")
    return time.perf_counter() - t0


def _compression(point: dict) -> str:
    parts = []
    for name, knobs in (point.get("compression") or {}).items():
        value = next(iter(knobs.values()), None) if isinstance(knobs, dict) else None
        parts.append(f"{name} {value:.2g}" if isinstance(value, float) else name)
    return ", ".join(parts) or "-"


def run_demo(run_dir: Path, setup: bool, log: Path) -> dict:
    seconds = {}
    if setup:
        seconds["setup"] = _make("setup-demo", run_dir, log)
    for step in STEPS:
        seconds[step.removeprefix("demo-")] = _make(step, run_dir, log)
        print(f"[demo] {step}: {seconds[step.removeprefix('demo-')]:.1f} s", flush=True)
    return seconds


def summarize(run_dir: Path, seconds: dict, loads: tuple[str, str], setup: bool) -> dict:
    front = json.loads((run_dir / "front.json").read_text())
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    compare = json.loads((run_dir / "compare.json").read_text())
    points = {p["number"]: p for p in front["front"]}
    gaps = [abs(r["test_accuracy"] - r["recorded_test_accuracy"]) for r in summary]
    return {
        "command": "python benchmarks/demo.py" + (" --setup" if setup else ""),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores",
        "load_before_after": list(loads),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_s": round(sum(seconds.values()), 1),
        "front_size": len(front["front"]),
        "budget": compare["budget"],
        "max_onnx_vs_recorded_test_accuracy_gap": max(gaps),
        "exported": [
            {
                "trial": r["trial"],
                "test_accuracy": round(r["test_accuracy"], 4),
                "flops": r["flops"],
                "params": r["params"],
                "compression": _compression(points.get(r["trial"], {})),
                "architecture": points.get(r["trial"], {}).get("params"),
                "weights": r["weights"],
            }
            for r in sorted(summary, key=lambda r: r["flops"])
        ],
        "references": compare["references"],
        "verdict": compare["verdict"],
        "last_lines": compare["last_lines"],
    }


def write(result: dict) -> str:
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    s, v = result["seconds"], result["verdict"]
    steps = " + ".join(f"{k} {val} s" for k, val in s.items())
    lines = [
        f"# Demo: `make demo` ({result['date']}, {result['machine']})",
        "",
        f"`{result['command']}`: {steps} = **{result['total_s']} s** (load average before / "
        f"after: {result['load_before_after'][0]} / {result['load_before_after'][1]}).",
        "",
        f"Front: {result['front_size']} models; exported and re-verified (largest ONNX vs "
        f"recorded test-accuracy gap {result['max_onnx_vs_recorded_test_accuracy_gap']:.4f}), "
        f"weights from `nas finalize` ({result['budget']['epochs']:g} epochs on "
        f"{result['budget']['train_examples']:,} images). Best exported: "
        f"**{100 * v['best']['test_accuracy']:.2f} %**; cheapest: "
        f"{100 * v['cheapest']['test_accuracy']:.2f} % at {v['cheapest']['flops']:,.0f} "
        "multiply-adds"
        + (
            f", **{v['cheapest_flops_ratio']:.1f}x** fewer than {v['cheapest_versus']}."
            if v["cheapest_versus"]
            else ", less accurate than every hand-designed CNN trained here."
        ),
        "",
        "| trial | test accuracy | multiply-adds | params | compression | weights |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['trial']} | {100 * r['test_accuracy']:.2f} % | {r['flops']:,.0f} | "
        f"{r['params']:,.0f} | "
        f"{r['compression']} | {r['weights']} |"
        for r in result["exported"]
    ]
    lines += [
        "",
        "| reference (same recipe and budget) | test accuracy, mean (seeds) | multiply-adds "
        "| train s (all seeds) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {100 * r['test_accuracy']:.2f} % "
        f"({', '.join(f'{100 * a:.2f}' for a in r['seeds'])}) | {r['flops']:,.0f} | "
        f"{r['seconds']:.0f} |"
        for r in result["references"]
    ]
    lines += ["", "The demo's last lines:", "", "```", *result["last_lines"], "```"]
    text = "\n".join(lines) + "\n"
    (out / "demo.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="keep the run folder here (default: a temp folder)")
    ap.add_argument("--setup", action="store_true", help="time `make setup-demo` first")
    args = ap.parse_args()
    if shutil.which("make") is None:
        sys.exit("error: `make` is missing; install it (apt-get install make)")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = (args.out or Path(tmp) / "run").resolve()
        if run_dir.exists():
            sys.exit(f"error: {run_dir} exists; the demo is timed from a fresh run folder")
        log = Path(tmp) / "demo.log"
        before = _load()
        seconds = run_demo(run_dir, args.setup, log)
        after = _load()
        result = summarize(run_dir, seconds, (before, after), args.setup)
    print(write(result))


if __name__ == "__main__":
    main()
