"""Time the default demo end to end (search + front + export with re-verification).

    python benchmarks/demo.py [--out runs/fashion-mnist]   # what `make demo` runs, from scratch

Writes benchmarks/results/demo.json and demo.md: wall time of each step, trials, front size,
the front (test accuracy and multiply-adds of each model) and the export verification.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.report import describe_compression  # noqa: E402

EXPERIMENT = ROOT / "experiments" / "fashion_mnist.yaml"


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def compressed_vs_plain(run_dir: Path) -> dict:
    """How the compressed trials compare with the uncompressed architectures of the same run."""
    from nas.front import completed_points, nondominated
    from nas.runs import Run

    run = Run.open(run_dir)
    feasible, _ = completed_points(run.study())
    dirs = run.directions
    plain = [p for p in feasible if not p.compression]
    packed = [p for p in feasible if p.compression]
    front = nondominated(feasible, dirs)

    def dominated_by_compressed(p) -> bool:
        return any(p not in nondominated([p, q], dirs) for q in packed)

    return {
        "trials_plain": len(plain),
        "trials_compressed": len(packed),
        "front_compressed": sum(1 for p in front if p.compression),
        "plain_dominated_by_a_compressed_model": sum(map(dominated_by_compressed, plain)),
    }


def main() -> None:
    nas = [sys.executable, "-m", "nas.cli"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="keep the run folder here (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.out or Path(tmp) / "run"
        if run_dir.exists():
            sys.exit(f"error: {run_dir} exists; the demo is timed from a fresh run folder")
        t_run = _timed(
            [*nas, "run", str(EXPERIMENT), "--out", str(run_dir), "--workers", "2", "-q"]
        )
        t_export = _timed([*nas, "export", str(run_dir), "--to", str(run_dir / "exports"), "-q"])
        front = json.loads((run_dir / "front.json").read_text())
        summary = json.loads((run_dir / "exports" / "summary.json").read_text())
        dominance = compressed_vs_plain(run_dir)
    gaps = [abs(r["test_accuracy"] - r["search_test_accuracy"]) for r in summary]
    comp = {p["number"]: p["compression"] for p in front["front"]}
    result = {
        "command": "python benchmarks/demo.py",
        "machine": f"{platform.machine()}, Python {platform.python_version()}, 2 cores",
        "date": time.strftime("%Y-%m-%d"),
        "search_s": round(t_run, 1),
        "export_s": round(t_export, 1),
        "total_s": round(t_run + t_export, 1),
        "front_size": len(front["front"]),
        "hypervolume": round(front["hypervolume"], 4),
        "exported": len(summary),
        "max_onnx_vs_torch_test_accuracy_gap": max(gaps),
        **dominance,
        "front": [
            {
                "trial": r["trial"],
                "test_accuracy": round(r["test_accuracy"], 4),
                "flops": r["flops"],
                "params": r["params"],
                "size_bytes": r["size_bytes"],
                "latency_ms_batch1": round(r["latency_ms_batch1"], 4),
                "compression": describe_compression(comp.get(r["trial"], {})),
            }
            for r in summary
        ],
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Demo: {EXPERIMENT.name} ({result['date']}, {result['machine']})",
        "",
        f"`{result['command']}`: search {result['search_s']} s + export "
        f"{result['export_s']} s = **{result['total_s']} s**; front of "
        f"**{result['front_size']}** models (HV {result['hypervolume']}), all exported and "
        f"re-verified (max ONNX vs torch test-accuracy gap "
        f"{result['max_onnx_vs_torch_test_accuracy_gap']:.4f}).",
        "",
        f"Compressed models on the front: {result['front_compressed']} of "
        f"{result['front_size']}; uncompressed architectures dominated by a compressed model of "
        f"the same run: {result['plain_dominated_by_a_compressed_model']} of "
        f"{result['trials_plain']} ({result['trials_compressed']} compressed trials).",
        "",
        "| trial | test accuracy | multiply-adds | params | size B | ORT latency b=1 (ms) "
        "| compression |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['trial']} | {r['test_accuracy']} | {r['flops']:.0f} | {r['params']:.0f} | "
        f"{r['size_bytes']:.0f} | {r['latency_ms_batch1']} | {r['compression']} |"
        for r in result["front"]
    ]
    (out / "demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
