"""Knowledge distillation at equal budget: small students trained with and without a teacher.

    python benchmarks/distillation.py [--epochs 3] [--train 20000] [--seeds 0 1 2]

Fashion-MNIST (a 20k training subset, as the demo). The teacher is the cnn of
benchmarks/compression.py (32-64-64 channels) trained with the same recipe. Each student is
trained from the same initialisation for the same epochs: with cross-entropy, and with the
distillation loss of ``compression: {distill: ...}`` at each (temperature, alpha) of SETTINGS.
Test accuracy, mean and spread over seeds.
Writes benchmarks/results/distillation.json and distillation.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compression import ARCHS  # noqa: E402
from nas.compress import Context, get  # noqa: E402
from nas.compress.distill import TEACHER_LOGITS  # noqa: E402
from nas.config import DataConfig, Subset, TrainConfig  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.space import rebuild, resolve_space  # noqa: E402
from nas.teacher import _logits  # noqa: E402
from nas.train import evaluate, train  # noqa: E402
from objectives import count_flops, count_params  # noqa: E402

TEACHER = ("cnn", ARCHS["cnn"])  # the cnn of benchmarks/compression.py (32-64-64)
STUDENTS = {
    "cnn 4-8": (
        "cnn",
        {
            "depth": 2,
            "width_0": 4,
            "kernel_0": 3,
            "pool_0": "max",
            "width_1": 8,
            "kernel_1": 3,
            "pool_1": "max",
        },
    ),
    "cnn 8-16": (
        "cnn",
        {
            "depth": 2,
            "width_0": 8,
            "kernel_0": 3,
            "pool_0": "max",
            "width_1": 16,
            "kernel_1": 3,
            "pool_1": "max",
        },
    ),
    "mlp 784-32-10": ("mlp", {"depth": 1, "width_0": 32}),
}
SETTINGS = [(4.0, 0.7), (2.0, 0.5), (1.0, 0.5)]  # (temperature, alpha) tried, all reported


def build(space: str, params: dict, splits) -> torch.nn.Module:
    args = {"widths": [4, 8, 16, 32, 64]} if space == "cnn" else {}
    return rebuild(
        resolve_space(space),
        params,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        args=args,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits = load_data(DataConfig(name="fashion-mnist", subset=Subset(train=args.train)))
    cfg = TrainConfig(epochs=args.epochs, lr=0.004)
    teacher = build(*TEACHER, splits)
    t0 = time.time()
    train(teacher, splits.train, cfg, seed=0)
    teacher_acc = evaluate(teacher, splits.test)
    print(f"teacher: {teacher_acc:.4f} test accuracy ({time.time() - t0:.0f}s)", flush=True)
    ctx = Context(splits.input_shape, extra={TEACHER_LOGITS: _logits(teacher, splits.train.x)})
    modes = {"ce": None}
    for t, a in SETTINGS:
        knobs = {"temperature": t, "alpha": a, "teacher": "largest"}
        modes[f"kd T={t:g} a={a:g}"] = get("distill").criterion(knobs, ctx)
    rows = []
    for name, (space, params) in STUDENTS.items():
        acc: dict[str, list[float]] = {m: [] for m in modes}
        for seed in args.seeds:
            torch.manual_seed(seed)
            init = build(space, params, splits)
            for mode, criterion in modes.items():
                model = copy.deepcopy(init)
                train(model, splits.train, cfg, seed=seed, criterion=criterion)
                acc[mode].append(evaluate(model, splits.test))
            print(name, seed, {m: round(v[-1], 4) for m, v in acc.items()}, flush=True)
        row = {
            "student": name,
            "macs": count_flops(init, splits.input_shape),
            "params": count_params(init),
            "accuracy": {
                m: {
                    "mean": statistics.mean(v),
                    "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                    "all": v,
                }
                for m, v in acc.items()
            },
        }
        rows.append(row)
    meta = {
        "command": "python benchmarks/distillation.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "recipe": f"{args.train} training images, {args.epochs} epochs (Adam, cosine) for "
        f"teacher and students, the same initialisation per seed; seeds {args.seeds}",
        "teacher": {"arch": TEACHER, "test_accuracy": teacher_acc, "params": count_params(teacher)},
    }
    out = ROOT / "benchmarks" / "results"
    (out / "distillation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Distillation at equal budget ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        meta["recipe"] + f"; teacher (cnn 32-64-64, {count_params(teacher)} params): "
        f"{teacher_acc:.4f} test accuracy.",
        "",
        "| student | MACs | params | " + " | ".join(modes) + " |",
        "|---|---|---|" + "---|" * len(modes),
    ]
    for r in rows:
        cells = []
        for m in modes:
            a = r["accuracy"][m]
            gain = 100 * (a["mean"] - r["accuracy"]["ce"]["mean"])
            extra = "" if m == "ce" else f" ({gain:+.1f} pp)"
            cells.append(f"{a['mean']:.4f} ± {a['std']:.4f}{extra}")
        lines.append(
            f"| {r['student']} | {r['macs']:.0f} | {r['params']:.0f} | " + " | ".join(cells) + " |"
        )
    (out / "distillation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
