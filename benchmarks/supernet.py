"""Supernet search vs train-from-scratch search on Fashion-MNIST, at equal wall-clock.

    python benchmarks/supernet.py [--run runs/supernet-bench]

Stages, each resumable (re-run the same command; what is done is kept):

1. supernet arm: ``nas run experiments/fashion_mnist_supernet.yaml --out RUN/supernet``: the
   elastic MobileNet supernet trained once, 1,200 sub-networks scored with inherited weights,
   the front saved and fine-tuned; its whole wall-clock W is recorded;
2. scratch arm: ``nas run experiments/fashion_mnist_elastic.yaml --out RUN/scratch --timeout W``:
   the same space, every candidate trained from scratch, for the same wall-clock (trials running
   at the timeout finish, so its wall-clock is W plus at most one trial);
3. both fronts (selected on validation accuracy vs multiply-adds) compared on the test split:
   hypervolume of test accuracy vs multiply-adds (fvcore) and vs measured latency (every front
   model's deployed ONNX timed in one interleaved onnxruntime pass, 1 thread, batch 1);
4. acceptance checks: seconds per scored candidate (in the search; alone on 1 thread, without
   and with compression knobs: slimming and int8 PTQ sampled with the sub-network);
   sub-networks cut out and evaluated standalone vs inside the supernet (same images,
   difference in points); the accuracy predictor's Kendall tau (the run's
   ``supernet/predictors.json``); the per-layer latency table's Kendall tau against 60
   sub-networks timed whole.

Writes benchmarks/results/supernet.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from front_quality import hypervolumes, staircase, time_all  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SUPERNET = ROOT / "experiments" / "fashion_mnist_supernet.yaml"
SCRATCH = ROOT / "experiments" / "fashion_mnist_elastic.yaml"


def _say(msg: str) -> None:
    print(f"[supernet-bench] {msg}", flush=True)


def arm(experiment: Path, out: Path, extra: list[str]) -> float:
    """Run one arm unless done; return its wall-clock seconds (recorded beside the run)."""
    record = out.parent / f"{out.name}.wall.json"
    if record.is_file() and (out / "front.json").is_file():
        _say(f"{out.name}: finished before; kept")
        return float(json.loads(record.read_text())["wall_s"])
    t0 = time.time()
    cmd = [sys.executable, "-m", "nas.cli", "run", str(experiment), "--out", str(out), *extra]
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - t0
    record.write_text(json.dumps({"wall_s": wall}))
    return wall


def fronts(sn_dir: Path, sc_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each arm's front models: test accuracy, multiply-adds, the model itself."""
    from nas.export import trial_model
    from nas.run_folder import final_root, read_finals
    from nas.runs import Run

    out: dict[str, list[dict[str, Any]]] = {}
    for arm_name, run_dir in (("supernet", sn_dir), ("scratch", sc_dir)):
        run = Run.open(run_dir)
        finals = read_finals(run_dir)
        rows = []
        for p in run.front().points:
            final = finals.get(p.number)
            m = final["metrics"] if final else p.metrics
            root = final_root(run_dir) if final else None
            rows.append(
                {
                    "name": f"{arm_name} trial {p.number}",
                    "trial": p.number,
                    "accuracy": m["test_accuracy"],
                    "search_accuracy": p.metrics["accuracy"],
                    "search_test_accuracy": p.metrics.get("test_accuracy"),
                    "flops": m["flops"],
                    "fine_tuned": final is not None,
                    "model": trial_model(run, p, root) if root else trial_model(run, p),
                }
            )
        out[arm_name] = rows
    return out


def extraction_check(sn_dir: Path, n: int = 20) -> dict[str, Any]:
    """Sub-networks evaluated inside the supernet vs cut out, on the whole validation split."""
    from nas.runs import Run
    from nas.supernet.search import SupernetProblem
    from nas.train import evaluate

    run = Run.open(sn_dir)
    full = run.exp.data.model_copy(update={"subset": None})
    exp = run.exp.model_copy(update={"data": full})
    prob = SupernetProblem(exp, sn_dir)
    gen = torch.Generator().manual_seed(1)
    diffs, rows = [], []
    for i in range(n):
        config = prob.net.largest() if i == 0 else prob.net.smallest() if i == 1 else None
        config = config or prob.net.sample(gen)
        standalone = prob.subnet(config)  # recalibrated, then cut out
        inside = evaluate(prob.net, prob.data.val)
        alone = evaluate(standalone, prob.data.val)
        diffs.append(abs(inside - alone) * 100)
        rows.append({"in_supernet": inside, "standalone": alone})
    return {
        "sub_networks": n,
        "val_images": len(prob.data.val),
        "max_abs_diff_pp": max(diffs),
        "mean_abs_diff_pp": statistics.mean(diffs),
        "rows": rows,
    }


def slimming_check(sn_dir: Path, n: int = 6, ratios: tuple[float, ...] = (0.1, 0.3)) -> dict:
    """Validation accuracy of random sub-networks slimmed without training: by |gamma| (network
    slimming's order, which assumes the L1 training the supernet never had), by |gamma| then BN
    recalibrated, and by position then BN recalibrated (what supernet mode does)."""
    from nas.compress.slimming_ops import slim
    from nas.runs import Run
    from nas.supernet.search import SupernetProblem
    from nas.supernet.train import recalibrate_bn
    from nas.train import evaluate

    run = Run.open(sn_dir)
    prob = SupernetProblem(run.exp, sn_dir, run.splits)
    shape, val = tuple(run.splits.input_shape), prob.data.val
    gen = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(n):
        whole = prob.subnet(prob.net.sample(gen))
        row: dict[str, Any] = {"unslimmed": evaluate(whole, val)}
        for r in ratios:
            for name, by_position, recal in (
                ("gamma", False, False),
                ("gamma_recalibrated", False, True),
                ("position_recalibrated", True, True),
            ):
                cut = slim(whole, r, shape, round_to=8, by_position=by_position)
                if recal:
                    recalibrate_bn(cut, prob.calib_x)
                row[f"{name}@{r}"] = evaluate(cut.eval(), val)
        rows.append(row)
    keys = [k for k in rows[0] if k != "unslimmed"]
    return {
        "sub_networks": n,
        "val_images": len(val),
        "ratios": list(ratios),
        "unslimmed": [min(r["unslimmed"] for r in rows), max(r["unslimmed"] for r in rows)],
        "range": {k: [min(r[k] for r in rows), max(r[k] for r in rows)] for k in keys},
        "rows": rows,
    }


def latency_table_check(sn_dir: Path, n: int = 60) -> dict[str, Any]:
    from scipy.stats import kendalltau

    from nas.runs import Run
    from nas.supernet.latency import LatencyTable, measure
    from nas.supernet.search import build_supernet, supernet_dir

    run = Run.open(sn_dir)
    net = build_supernet(run.exp, run.splits).eval()
    table = LatencyTable(supernet_dir(sn_dir) / "latency_table.json")
    t0 = time.perf_counter()
    filled = table.fill(net, _say)
    fill_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(2)
    configs = [net.sample(gen) for _ in range(n)]
    pred = [table.predict(net, c) for c in configs]
    real = [measure(net.extract(c).eval(), tuple(run.splits.input_shape)) for c in configs]
    return {
        "pieces": len(table.entries),
        "pieces_timed_now": filled,
        "fill_seconds": fill_s if filled else None,
        "sub_networks": n,
        "kendall_tau": float(kendalltau(pred, real).statistic),
        "mean_abs_rel_error": statistics.mean(
            abs(p - r) / r for p, r in zip(pred, real, strict=True)
        ),
    }


def scoring(sn_dir: Path) -> dict[str, Any]:
    from nas.runs import Run

    trials = [t for t in Run.open(sn_dir).study().trials if "score_seconds" in t.user_attrs]
    secs = sorted(t.user_attrs["score_seconds"] for t in trials)
    return {
        "candidates": len(trials),
        "mean_s": statistics.mean(secs),
        "median_s": statistics.median(secs),
        "p95_s": secs[int(0.95 * (len(secs) - 1))],
        "max_s": secs[-1],
    }


# compression knobs sampled with the sub-network in the second scoring-speed check
KNOBS = {
    "slimming": {"ratio": [0.0, 0.5], "strength": 0, "optional": True},
    "ptq": {"optional": True},
}
# and timed on the largest sub-network (trial params of the slimming and ptq knobs)
LARGEST_KNOBS = {"slimming.use": True, "slimming.ratio": 0.1, "ptq.use": True}


def scoring_alone(
    sn_dir: Path, n: int = 100, compression: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Seconds to score random candidates as a search worker does (1 thread, quiet machine),
    after one warm-up candidate (imports); with ``compression`` the run's experiment samples
    those knobs too."""
    import optuna

    from nas.runs import Run
    from nas.search._local import set_threads
    from nas.supernet.search import SupernetProblem

    set_threads(1)
    run = Run.open(sn_dir)
    exp = run.exp
    if compression is not None:
        exp = exp.model_copy(update={"compression": compression})
    prob = SupernetProblem(exp, sn_dir, run.splits)
    study = optuna.create_study(
        directions=list(prob.directions.values()), sampler=optuna.samplers.RandomSampler(seed=3)
    )
    secs, compressed = [], 0
    for i in range(n + 1):
        trial = study.ask()
        t0 = time.perf_counter()
        prob.evaluate(prob.sample(trial), trial)
        if i:  # the first one is the warm-up
            secs.append(time.perf_counter() - t0)
            compressed += bool(trial.user_attrs.get("compression"))
    largest = None
    if compression is not None:  # the costliest candidate: the largest sub-network, compressed
        from search_spaces.elastic import params_of

        params = {**params_of(prob.net.largest()), **LARGEST_KNOBS}
        times = []
        for _ in range(3):
            trial = optuna.trial.FixedTrial(params)
            t0 = time.perf_counter()
            prob.evaluate(prob.sample(trial), trial)
            times.append(time.perf_counter() - t0)
        largest = {"params": LARGEST_KNOBS, "median_s": statistics.median(times)}
    set_threads(torch.get_num_threads())
    secs.sort()
    return {
        "largest_compressed": largest,
        "candidates": n,
        "compression": compression,
        "compressed_candidates": compressed,
        "threads": 1,
        "mean_s": statistics.mean(secs),
        "median_s": statistics.median(secs),
        "p95_s": secs[int(0.95 * (n - 1))],
        "max_s": secs[-1],
    }


def plot(rows: dict[str, list[dict]], path: Path, walls: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"supernet": "tab:blue", "scratch": "tab:orange"}
    labels = {
        "supernet": "supernet search + fine-tune",
        "scratch": "train-from-scratch search",
    }
    for ax, cost, xlabel in zip(
        axes,
        ("flops", "latency_ms_batch1"),
        ("multiply-adds (fvcore)", "onnxruntime latency, batch 1, 1 thread (ms)"),
        strict=True,
    ):
        for arm_name, rs in rows.items():
            c = colors[arm_name]
            ax.step(*staircase(rs, cost), where="post", color=c, alpha=0.6)
            ax.scatter([r[cost] for r in rs], [r["accuracy"] for r in rs], color=c, zorder=3,
                       label=f"{labels[arm_name]} ({walls[arm_name] / 60:.0f} min)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Fashion-MNIST, elastic MobileNet space: fronts at equal wall-clock")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "supernet-bench")
    args = ap.parse_args()
    base = args.run.resolve()
    base.mkdir(parents=True, exist_ok=True)
    sn_dir, sc_dir = base / "supernet", base / "scratch"

    walls = {"supernet": arm(SUPERNET, sn_dir, ["-q"])}
    walls["scratch"] = arm(SCRATCH, sc_dir, ["-q", "--timeout", f"{walls['supernet']:.0f}"])

    _say("fronts: loading models")
    rows = fronts(sn_dir, sc_dir)
    models = {r["name"]: r.pop("model") for rs in rows.values() for r in rs}
    for name, lat in time_all(models, sn_dir / "onnx").items():
        for rs in rows.values():
            for r in rs:
                if r["name"] == name:
                    r.update(lat)
    _say("checks: extraction, latency table, scoring speed")
    from nas.runs import Run

    predictors = json.loads((sn_dir / "supernet" / "predictors.json").read_text())
    predictors.get("latency", {}).pop("predicted_ms", None)
    predictors.get("latency", {}).pop("measured_ms", None)
    training = json.loads((sn_dir / "supernet" / "training.json").read_text())
    sc_trials = [t for t in Run.open(sc_dir).study().trials if t.datetime_complete is not None]
    result = {
        "command": "python benchmarks/supernet.py",
        "machine": f"{platform.machine()}, Python {platform.python_version()}, 2 cores",
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": walls,
        "supernet": {
            "experiment": str(SUPERNET.relative_to(ROOT)),
            "training": training,
            "scoring": scoring(sn_dir),
            "scoring_alone": scoring_alone(sn_dir),
            "scoring_alone_with_knobs": scoring_alone(sn_dir, compression=KNOBS),
            "front_size": len(rows["supernet"]),
            "extraction": extraction_check(sn_dir),
            "slimming": slimming_check(sn_dir),
            "accuracy_predictor": predictors.get("accuracy"),
            "latency_table": latency_table_check(sn_dir),
        },
        "scratch": {
            "experiment": str(SCRATCH.relative_to(ROOT)),
            "trials_completed": len(sc_trials),
            "front_size": len(rows["scratch"]),
        },
        "hypervolume": {
            "accuracy_vs_macs": hypervolumes(rows["supernet"], rows["scratch"], "flops"),
            "accuracy_vs_latency_batch1": hypervolumes(
                rows["supernet"], rows["scratch"], "latency_ms_batch1"
            ),
        },
        "models": rows,
    }
    for hv in result["hypervolume"].values():  # front_quality names the second set "baselines"
        hv["supernet"], hv["scratch"] = hv.pop("front"), hv.pop("baselines")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "supernet.json").write_text(json.dumps(result, indent=2))
    plot(rows, RESULTS / "supernet.png", walls)
    (RESULTS / "supernet.md").write_text(markdown(result))
    print(markdown(result))


def _slimming_line(sl: dict[str, Any]) -> str:
    def rng(key: str) -> str:
        lo, hi = sl["range"][key]
        return f"{lo * 100:.0f}-{hi * 100:.0f} %"

    per_ratio = "; ".join(
        f"{r:.0%} removed: by |gamma| {rng(f'gamma@{r}')}, by |gamma| + BN recalibration "
        f"{rng(f'gamma_recalibrated@{r}')}, trailing channels + BN recalibration "
        f"{rng(f'position_recalibrated@{r}')}"
        for r in sl["ratios"]
    )
    lo, hi = sl["unslimmed"]
    return (
        f"- Slimming without training, {sl['sub_networks']} random sub-networks "
        f"({lo * 100:.0f}-{hi * 100:.0f} % validation accuracy unslimmed, "
        f"{sl['val_images']} images): {per_ratio}. Supernet mode uses the last."
    )


def markdown(res: dict[str, Any]) -> str:
    sn, sc, hv, w = res["supernet"], res["scratch"], res["hypervolume"], res["wall_s"]
    tr, sco, ex, lt = sn["training"], sn["scoring"], sn["extraction"], sn["latency_table"]
    al, ak = sn["scoring_alone"], sn["scoring_alone_with_knobs"]
    acc = sn["accuracy_predictor"] or {}
    lines = [
        f"# Supernet search vs train-from-scratch search ({res['date']}, {res['machine']})",
        "",
        f"`{res['command']}`. Fashion-MNIST, the `elastic_mobilenet` space, objectives accuracy "
        f"and multiply-adds, 2 workers. Supernet arm (`{sn['experiment']}`): "
        f"{w['supernet'] / 60:.1f} min in all: the supernet trained for {tr['epochs']} epochs "
        f"({tr['seconds'] / 60:.1f} min), {sco['candidates']} sub-networks scored, the front of "
        f"{sn['front_size']} fine-tuned. Scratch arm (`{sc['experiment']}`): "
        f"{w['scratch'] / 60:.1f} min, {sc['trials_completed']} candidates trained, a front of "
        f"{sc['front_size']}. Test accuracy on the 10k test split; latency of each front "
        f"model's ONNX timed in one interleaved pass (onnxruntime, 1 thread, batch 1).",
        "",
        "| hypervolume (common reference) | supernet + fine-tune | from scratch |",
        "|---|---|---|",
        f"| test accuracy vs multiply-adds | {hv['accuracy_vs_macs']['supernet']:.4f} | "
        f"{hv['accuracy_vs_macs']['scratch']:.4f} |",
        f"| test accuracy vs latency (batch 1) | "
        f"{hv['accuracy_vs_latency_batch1']['supernet']:.4f} | "
        f"{hv['accuracy_vs_latency_batch1']['scratch']:.4f} |",
        "",
        "## Acceptance checks",
        "",
        f"- Scoring one candidate (cut out, BN recalibrated on 256 images, measured on the "
        f"1,000-image validation subset), on a quiet machine, 1 thread, {al['candidates']} random "
        f"candidates: mean {al['mean_s']:.2f} s, median {al['median_s']:.2f} s, 95th "
        f"percentile {al['p95_s']:.2f} s, max {al['max_s']:.2f} s (after one warm-up "
        f"candidate). With compression knobs sampled too (slimming ratio 0-0.5 and int8 PTQ, "
        f"each optional; {ak['compressed_candidates']} of {ak['candidates']} compressed): mean "
        f"{ak['mean_s']:.2f} s, median {ak['median_s']:.2f} s, 95th percentile "
        f"{ak['p95_s']:.2f} s, max {ak['max_s']:.2f} s; the largest sub-network, slimmed by 0.1 "
        f"and int8: {ak['largest_compressed']['median_s']:.2f} s (median of 3). In the search "
        f"itself (2 "
        f"workers on 2 cores, the sampler's work, other processes beside): mean "
        f"{sco['mean_s']:.2f} s, median {sco['median_s']:.2f} s, 95th percentile "
        f"{sco['p95_s']:.2f} s, max {sco['max_s']:.2f} s; {sco['candidates']} candidates scored.",
        f"- Cut out vs inside the supernet, {ex['sub_networks']} sub-networks on "
        f"{ex['val_images']} validation images: max difference {ex['max_abs_diff_pp']:.3f} pp "
        f"(mean {ex['mean_abs_diff_pp']:.4f} pp).",
        _slimming_line(sn["slimming"]),
        f"- Accuracy predictor ({acc.get('model', 'not fitted')}): Kendall tau "
        f"{acc.get('kendall_tau', float('nan')):.3f} on {acc.get('held_out', 0)} held-out "
        f"candidates.",
        f"- Latency lookup table ({lt['pieces']} pieces): Kendall tau {lt['kendall_tau']:.3f} "
        f"against {lt['sub_networks']} sub-networks timed whole (mean relative error "
        f"{100 * lt['mean_abs_rel_error']:.1f} %).",
        "",
        "## Front models",
        "",
        "| arm | trial | test accuracy | search accuracy (val) | MACs | latency b1 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for arm_name, rs in res["models"].items():
        for r in sorted(rs, key=lambda r: r["flops"]):
            lines.append(
                f"| {arm_name} | {r['trial']} | {r['accuracy']:.4f} | "
                f"{r['search_accuracy']:.4f} | {r['flops']:.3g} | "
                f"{r['latency_ms_batch1']:.3f} |"
            )
    lines += ["", "![fronts](supernet.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
