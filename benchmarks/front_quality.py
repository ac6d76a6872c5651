"""A searched and finalized front vs hand-designed models on Fashion-MNIST, same 5-epoch recipe.

    python benchmarks/front_quality.py [--run runs/front-quality] [--epochs 5] [--seeds 3]

Stages, each resumable (re-run the same command after an interruption; what is done is kept):

1. search: ``nas run experiments/fashion_mnist_front.yaml --out RUN`` (60 minutes, 2 workers on
   this 2-core machine; skipped when RUN already holds a finished search: RUN/front.json);
2. finalize: ``nas finalize RUN --epochs 5``: the front retrained on the full 60k training split;
3. baselines: MLP 784-32-10, LeNet-300-100, LeNet-5, CNNs conv(8,16) / (16,32) / (32,64) with BN
   and max-pool, a tiny MobileNetV2; each trained with the same recipe (the experiment's
   optimizer, lr, schedule, batch size; 5 epochs; the full training split) for every seed;
4. seeds: a front model that answers a baseline (the most accurate one with at most its MACs)
   and is within the baselines' seed spread of it is finalized again with the other seeds;
5. latency: every model's deployed ONNX file timed in one pass, interleaved (onnxruntime,
   1 thread, batch 1 and 64, warmed up, median of rounds).

Writes benchmarks/results/front_quality.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch import nn  # noqa: E402

EXPERIMENT = ROOT / "experiments" / "fashion_mnist_front.yaml"
RESULTS = ROOT / "benchmarks" / "results"
SHAPE = (1, 28, 28)


# --- the hand-designed models ------------------------------------------------------------------


def _cnn(a: int, b: int) -> nn.Module:
    """conv(a) -> BN -> ReLU -> maxpool -> conv(b) -> BN -> ReLU -> maxpool -> Linear."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(*block(1, a), *block(a, b), nn.Flatten(), nn.Linear(b * 7 * 7, 10))


def _lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def _mlp(*widths: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip((784, *widths), widths, strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1] if widths else 784, 10))
    return nn.Sequential(*layers)


def _mobilenet_v2_tiny() -> nn.Module:
    """Stem conv 3x3/2 (16) -> inverted residuals (expansion, out, stride): (1, 16, 1),
    (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1) -> 1x1 conv 128 -> global pool -> Linear."""
    from search_spaces.mobilenet import InvertedResidual, _conv_bn

    blocks, c = [], 16
    for t, out, s in ((1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1)):
        blocks.append(InvertedResidual(c, out, stride=s, expand=t, kernel=3, se=False))
        c = out
    return nn.Sequential(
        _conv_bn(1, 16, 3, stride=2),
        *blocks,
        _conv_bn(c, 128, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


BASELINES = {
    "MLP 784-32-10": lambda: _mlp(32),
    "LeNet-300-100": lambda: _mlp(300, 100),
    "LeNet-5": _lenet5,
    "CNN conv(8,16)": lambda: _cnn(8, 16),
    "CNN conv(16,32)": lambda: _cnn(16, 32),
    "CNN conv(32,64)": lambda: _cnn(32, 64),
    "MobileNetV2 tiny": _mobilenet_v2_tiny,
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def train_baseline(run_dir: str, name: str, seed: int, epochs: float) -> dict[str, Any]:
    """One hand-designed model, one seed, the run's recipe on the full training split (worker)."""
    from safetensors.torch import save_file

    from nas.data import final_splits
    from nas.runs import Run
    from nas.search._local import set_threads
    from nas.train import evaluate, seed_everything, train

    set_threads(1)
    exp = Run.open(run_dir).exp
    splits = final_splits(exp.data)
    cfg = exp.train.model_copy(update={"epochs": epochs, "steps": None})
    seed_everything(seed)
    model = BASELINES[name]()
    t0 = time.perf_counter()
    train(model, splits.train, cfg, seed=seed)
    rec = {
        "name": name,
        "seed": seed,
        "epochs": epochs,
        "train_examples": len(splits.train),
        "test_accuracy": evaluate(model, splits.test),
        "seconds": time.perf_counter() - t0,
    }
    folder = Path(run_dir) / "baselines"
    folder.mkdir(exist_ok=True)
    stem = f"{_slug(name)}-seed{seed}"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"{stem}.st")
    (folder / f"{stem}.json").write_text(json.dumps(rec, indent=2))
    return rec


def _pool(jobs: list[tuple], fn: Any, workers: int = 2) -> list[Any]:
    if not jobs:
        return []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        out = []
        for i, f in enumerate(futures, 1):
            out.append(f.result())
            print(f"[front_quality] {i}/{len(jobs)} done: {_describe(out[-1])}", flush=True)
        return out


def _describe(rec: dict[str, Any]) -> str:
    who = rec.get("name") or f"trial {rec.get('trial')}"
    acc = rec.get("test_accuracy", rec.get("metrics", {}).get("test_accuracy", math.nan))
    return f"{who} seed {rec.get('seed')}: test accuracy {acc:.4f} in {rec['seconds']:.0f} s"


# --- stages ------------------------------------------------------------------------------------


def search(run_dir: Path) -> None:
    if (run_dir / "front.json").is_file():
        print(f"[front_quality] search: {run_dir} holds a finished search; kept", flush=True)
        return
    cmd = [sys.executable, "-m", "nas.cli", "run", str(EXPERIMENT), "--out", str(run_dir), "-q"]
    subprocess.run(cmd, cwd=ROOT, check=True)


def baselines(run_dir: Path, seeds: int, epochs: float) -> dict[str, list[dict[str, Any]]]:
    folder = run_dir / "baselines"
    jobs, done = [], {}
    for name in BASELINES:
        for seed in range(seeds):
            path = folder / f"{_slug(name)}-seed{seed}.json"
            if path.is_file() and json.loads(path.read_text())["epochs"] == epochs:
                done[(name, seed)] = json.loads(path.read_text())
            else:
                jobs.append((str(run_dir), name, seed, epochs))
    print(f"[front_quality] baselines: {len(jobs)} to train, {len(done)} kept", flush=True)
    for rec in _pool(jobs, train_baseline):
        done[(rec["name"], rec["seed"])] = rec
    return {n: [done[(n, s)] for s in range(seeds)] for n in BASELINES}


def baseline_model(run_dir: Path, name: str, seed: int = 0) -> nn.Module:
    from safetensors.torch import load_file

    model = BASELINES[name]()
    model.load_state_dict(load_file(run_dir / "baselines" / f"{_slug(name)}-seed{seed}.st"))
    return model.eval()


def extra_seeds(run_dir: Path, numbers: list[int], seeds: int, epochs: float) -> dict:
    """Finalize ``numbers`` again with seeds 1..seeds-1 (RUN/seeds/seed-K); trial -> records."""
    from nas.finalize import Job, finalize_one
    from nas.runs import Run

    run = Run.open(run_dir)
    params = {p.number: p for p in run.front().front.candidates}
    jobs, out = [], {n: [] for n in numbers}
    for n in numbers:
        for k in range(1, seeds):
            root = run_dir / "seeds" / f"seed-{k}"
            path = root / f"trial-{n:05d}.json"
            if path.is_file() and json.loads(path.read_text())["epochs"] == epochs:
                out[n].append(json.loads(path.read_text()))
                continue
            root.mkdir(parents=True, exist_ok=True)
            p = params[n]
            job = Job(str(run_dir), n, p.params, p.metrics, epochs, "scratch", 1, k, str(root))
            jobs.append((job, False))
    for rec in _pool(jobs, finalize_one):
        out[rec["trial"]].append(rec)
    return out


def time_all(models: dict[str, nn.Module], folder: Path, rounds: int = 5) -> dict[str, dict]:
    """Each model's deployed ONNX, timed interleaved: median over rounds of onnxruntime medians."""
    from nas import onnx_utils
    from nas.data import load_data
    from nas.export import deployed_onnx
    from nas.runs import Run

    splits = load_data(Run.open(folder.parent).exp.data)
    sessions = {}
    for name, model in models.items():
        sub = folder / _slug(name)
        sub.mkdir(parents=True, exist_ok=True)
        path, _ = deployed_onnx(model, splits, sub)
        sessions[name] = onnx_utils.session(path, threads=1)
    times: dict[str, dict[int, list[float]]] = {n: {1: [], 64: []} for n in models}
    for r in range(rounds):
        for name, sess in sessions.items():
            for b in (1, 64):
                times[name][b].append(onnx_utils.time_ms(sess, SHAPE, b, repeats=30))
        print(f"[front_quality] latency round {r + 1}/{rounds}", flush=True)
    return {
        n: {f"latency_ms_batch{b}": statistics.median(v) for b, v in t.items()}
        for n, t in times.items()
    }


# --- comparison --------------------------------------------------------------------------------


def hypervolumes(front: list[dict], base: list[dict], cost: str) -> dict[str, Any]:
    """HV of (test accuracy, ``cost``) for both sets under one reference and ideal point."""
    from nas.front import default_reference, hypervolume, ideal_point
    from nas.search._problem import Point

    dirs = {"accuracy": "maximize", cost: "minimize"}

    def points(rows: list[dict]) -> list[Point]:
        return [
            Point(i, {}, {"accuracy": r["accuracy"], cost: r[cost]}) for i, r in enumerate(rows)
        ]

    both = points(front) + points(base)
    ref, ideal = default_reference(both, dirs), ideal_point(both, dirs)
    return {
        "reference": ref,
        "ideal": ideal,
        "front": hypervolume(points(front), dirs, ref, ideal),
        "baselines": hypervolume(points(base), dirs, ref, ideal),
    }


def staircase(rows: list[dict], cost: str) -> tuple[list[float], list[float]]:
    """The (cost, accuracy) steps of the rows that no cheaper row beats on accuracy."""
    best, xs, ys = -1.0, [], []
    for r in sorted(rows, key=lambda r: r[cost]):
        if r["accuracy"] > best:
            best = r["accuracy"]
            xs.append(r[cost])
            ys.append(r["accuracy"])
    return xs, ys


def plot(front: list[dict], base: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, cost, label in zip(
        axes,
        ("flops", "latency_ms_batch1"),
        ("multiply-adds (fvcore)", "onnxruntime latency, batch 1, 1 thread (ms)"),
        strict=True,
    ):
        f = sorted(front, key=lambda r: r[cost])
        ax.step(*staircase(f, cost), where="post", color="tab:blue", alpha=0.6)
        ax.scatter([r[cost] for r in f], [r["accuracy"] for r in f], color="tab:blue", zorder=3)
        ax.scatter([], [], color="tab:blue", label="searched + finalized front")
        for r in base:
            ax.errorbar(r[cost], r["accuracy"], yerr=r["std"], fmt="s", color="tab:red", ms=5)
            ax.annotate(r["name"], (r[cost], r["accuracy"]), fontsize=7, xytext=(4, -10),
                        textcoords="offset points")  # fmt: skip
        ax.errorbar([], [], yerr=[], fmt="s", color="tab:red", label="hand-designed (mean, std)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (5 epochs, full training split)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Fashion-MNIST: searched + finalized front vs hand-designed models")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from nas.front import cost_disagreements
    from nas.report import describe_compression
    from nas.run_folder import read_finals
    from nas.runs import Run
    from objectives import count_flops, count_params, model_size_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "front-quality")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    run_dir = args.run.resolve()
    nas = [sys.executable, "-m", "nas.cli"]

    search(run_dir)
    t0 = time.perf_counter()
    subprocess.run([*nas, "finalize", str(run_dir), "--epochs", str(args.epochs)], check=True)
    finalize_wall = time.perf_counter() - t0
    base_runs = baselines(run_dir, args.seeds, args.epochs)

    run = Run.open(run_dir)
    rf = run.front()
    finals = read_finals(run_dir)
    front_points = [p for p in rf.points if p.number in finals]
    rows: dict[str, dict[str, Any]] = {}
    for p in front_points:
        m = finals[p.number]["metrics"]
        rows[f"trial {p.number}"] = {
            "name": f"trial {p.number}",
            "kind": "front",
            "trial": p.number,
            "accuracy": m["test_accuracy"],
            "seeds": [m["test_accuracy"]],
            "flops": m["flops"],
            "search_test_accuracy": p.metrics["test_accuracy"],
            "compression": describe_compression(p.compression),
            "params_sampled": p.params,
        }
    for name, recs in base_runs.items():
        accs = [r["test_accuracy"] for r in recs]
        model = baseline_model(run_dir, name)
        rows[name] = {
            "name": name,
            "kind": "baseline",
            "accuracy": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "spread": max(accs) - min(accs),
            "seeds": accs,
            "flops": float(count_flops(model, SHAPE)),
            "params": float(count_params(model)),
            "size_bytes": float(model_size_bytes(model)),
            "train_seconds": statistics.mean(r["seconds"] for r in recs),
        }

    # 4. the front model answering each baseline; more seeds where the gap is within the spread
    def witness(b: dict) -> dict | None:
        fits = [r for r in rows.values() if r["kind"] == "front" and r["flops"] <= b["flops"]]
        return max(fits, key=lambda r: r["accuracy"]) if fits else None

    close = set()
    for b in [r for r in rows.values() if r["kind"] == "baseline"]:
        w = witness(b)
        if w is not None and abs(w["accuracy"] - b["accuracy"]) <= max(b["spread"], 1e-9):
            close.add(w["trial"])
    for n, recs in extra_seeds(run_dir, sorted(close), args.seeds, args.epochs).items():
        r = rows[f"trial {n}"]
        r["seeds"] = r["seeds"] + [x["metrics"]["test_accuracy"] for x in recs]
        r["accuracy_seed0"] = r["accuracy"]
        r["accuracy"] = statistics.mean(r["seeds"])
        r["std"] = statistics.stdev(r["seeds"])

    # 5. latency, every model in one interleaved pass
    from nas.export import trial_model
    from nas.run_folder import final_root

    models: dict[str, nn.Module] = {}
    for p in front_points:
        model = trial_model(run, p, final_root(run_dir))
        models[f"trial {p.number}"] = model
        rows[f"trial {p.number}"] |= {
            "params": float(count_params(model)),
            "size_bytes": float(finals[p.number]["metrics"].get("size_bytes", 0.0))
            or float(model_size_bytes(model)),
        }
    for name in BASELINES:
        models[name] = baseline_model(run_dir, name)
    for name, lat in time_all(models, run_dir / "onnx").items():
        rows[name] |= lat
    flags = cost_disagreements(rows)
    for n, r in rows.items():
        r["costs_disagree"] = flags.get(n)

    front = [r for r in rows.values() if r["kind"] == "front"]
    base = [r for r in rows.values() if r["kind"] == "baseline"]
    answers = []
    for b in base:
        w = witness(b)
        gap = None if w is None else w["accuracy"] - b["accuracy"]
        answers.append(
            {
                "baseline": b["name"],
                "baseline_accuracy": b["accuracy"],
                "baseline_std": b["std"],
                "baseline_spread": b["spread"],
                "baseline_flops": b["flops"],
                "front_model": w and w["name"],
                "front_accuracy": w and w["accuracy"],
                "front_seeds": w and len(w["seeds"]),
                "front_flops": w and w["flops"],
                "accuracy_gap": gap,
                "met": gap is not None and gap >= 0,
                "within_spread": gap is not None and abs(gap) <= b["spread"],
            }
        )
    study = run.study()
    done = [t for t in study.trials if t.datetime_complete is not None]
    result = {
        "command": "python benchmarks/front_quality.py",
        "machine": f"{platform.machine()}, Python {platform.python_version()}, 2 cores",
        "date": time.strftime("%Y-%m-%d"),
        "recipe": {**run.exp.train.model_dump(), "epochs": args.epochs, "train_examples": 60000},
        "search": {
            "experiment": str(EXPERIMENT.relative_to(ROOT)),
            "trials_completed": len(done),
            "wall_s": (
                max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
            ).total_seconds(),
            "train_subset": run.exp.data.subset.train if run.exp.data.subset else None,
            "epochs_per_trial": run.exp.train.epochs,
            "front_size": len(rf.points),
            "finalized": len(front_points),
        },
        "finalize_wall_s": finalize_wall,
        "hypervolume": {
            "accuracy_vs_macs": hypervolumes(front, base, "flops"),
            "accuracy_vs_latency_batch1": hypervolumes(front, base, "latency_ms_batch1"),
        },
        "answers": answers,
        "models": list(rows.values()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "front_quality.json").write_text(json.dumps(result, indent=2))
    plot(front, base, RESULTS / "front_quality.png")
    (RESULTS / "front_quality.md").write_text(markdown(result))
    print(markdown(result))


def markdown(res: dict[str, Any]) -> str:
    hv = res["hypervolume"]
    s = res["search"]
    ep = res["recipe"]["epochs"]
    lines = [
        f"# Front quality: searched + finalized vs hand-designed ({res['date']}, {res['machine']})",
        "",
        f"`{res['command']}`. Search: `{s['experiment']}`, {s['trials_completed']} trials in "
        f"{s['wall_s'] / 60:.0f} min (2 workers; {s['train_subset']} training images, "
        f"{s['epochs_per_trial']:g} epochs per trial); its front of {s['front_size']} models "
        f"finalized (`nas finalize --epochs {ep:g}`: the full 60k training split, "
        f"{res['finalize_wall_s'] / 60:.0f} min). Hand-designed models: the same recipe "
        f"({res['recipe']['optimizer']}, lr {res['recipe']['lr']}, {res['recipe']['schedule']}, "
        f"batch {res['recipe']['batch_size']}, {ep:g} epochs, 60k images), mean ± std over "
        f"seeds. Test accuracy on the 10k test split; latency of the deployed ONNX files timed "
        f"in one interleaved pass (onnxruntime, 1 thread).",
        "",
        "| hypervolume (common reference) | searched front | hand-designed |",
        "|---|---|---|",
        f"| accuracy vs multiply-adds | **{hv['accuracy_vs_macs']['front']:.4f}** | "
        f"{hv['accuracy_vs_macs']['baselines']:.4f} |",
        f"| accuracy vs latency (batch 1) | **{hv['accuracy_vs_latency_batch1']['front']:.4f}** "
        f"| {hv['accuracy_vs_latency_batch1']['baselines']:.4f} |",
        "",
        "## Each hand-designed model against the front",
        "",
        "The front model answering a baseline is its most accurate model with at most the "
        "baseline's multiply-adds; where the gap is within the baselines' seed spread it was "
        "finalized with the other seeds too and its mean is compared.",
        "",
        "| baseline | accuracy (mean ± std, spread) | MACs | front model | its accuracy (seeds) "
        "| its MACs | gap (pp) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in res["answers"]:
        if a["front_model"] is None:
            lines.append(
                f"| {a['baseline']} | {a['baseline_accuracy']:.4f} | {a['baseline_flops']:.3g} "
                "| none at these MACs | | | | not met |"
            )
            continue
        verdict = "met" if a["met"] else "not met"
        if a["within_spread"]:
            verdict += " (within seed spread)"
        lines.append(
            f"| {a['baseline']} | {a['baseline_accuracy']:.4f} ± {a['baseline_std']:.4f}, "
            f"{a['baseline_spread']:.4f} | {a['baseline_flops']:.3g} | {a['front_model']} | "
            f"{a['front_accuracy']:.4f} ({a['front_seeds']}) | {a['front_flops']:.3g} | "
            f"{100 * a['accuracy_gap']:+.2f} | {verdict} |"
        )
    lines += [
        "",
        "## Every model",
        "",
        "| model | test accuracy | MACs | params | size B | latency b1 (ms) | latency b64 (ms) "
        "| compression | costs disagree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(res["models"], key=lambda r: r["flops"]):
        acc = f"{r['accuracy']:.4f}"
        if len(r["seeds"]) > 1:
            acc += f" ± {r['std']:.4f}"
        lines.append(
            f"| {r['name']} | {acc} | {r['flops']:.3g} | {r['params']:.3g} | "
            f"{r['size_bytes']:.3g} | {r['latency_ms_batch1']:.4f} | "
            f"{r['latency_ms_batch64']:.3f} | {r.get('compression', '-')} | "
            f"{r.get('costs_disagree') or ''} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
