"""Unstructured sparsity at equal budget: criteria, schedules, lottery-ticket rewinding, DNS.

    python benchmarks/sparsity.py [--data mnist5k fashion-mnist] [--sparsity 0.9] [--seeds 0 1]

LeNet-300-100 trained ``--epochs`` (the same seed and initialisation for every row), then pruned
to ``--sparsity`` of its weights and trained ``--finetune`` more epochs with the zeros held, the
way a trial runs the ``unstructured`` and ``dns`` techniques. Rows: oneshot magnitude, gradient
and activation criteria (+ fine-tune), gradual magnitude (Zhu & Gupta, along training, +
fine-tune), lottery-ticket rewinding (survivors reset to their values at 5 % of training, then
retrained for the same fine-tune budget), and dynamic network surgery (+ fine-tune). Test
accuracy, mean over seeds. Writes benchmarks/results/sparsity.json and sparsity.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.compress import Context, get  # noqa: E402
from nas.compress.sparse_ops import sparsity_of  # noqa: E402
from nas.config import DataConfig, TrainConfig  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.pipeline import CALIBRATION_EXAMPLES, finetune_config, finish_sparse  # noqa: E402
from nas.space import rebuild, resolve_space  # noqa: E402
from nas.train import evaluate, train  # noqa: E402

LENET = {"depth": 2, "width_0": 300, "width_1": 100}
ROWS = {
    "magnitude, oneshot": ("unstructured", {"criterion": "magnitude", "schedule": "oneshot"}),
    "gradient, oneshot": ("unstructured", {"criterion": "gradient", "schedule": "oneshot"}),
    "activation, oneshot": ("unstructured", {"criterion": "activation", "schedule": "oneshot"}),
    "magnitude, gradual": ("unstructured", {"criterion": "magnitude", "schedule": "gradual"}),
    "lottery rewind": ("unstructured", {"criterion": "magnitude", "schedule": "rewind"}),
    "dynamic network surgery": ("dns", {}),
}


def one(data, splits, name, seed, epochs, finetune, sparsity) -> tuple[float, float]:
    shape, classes = splits.input_shape, splits.num_classes
    cfg = TrainConfig(epochs=epochs, lr=0.002, batch_size=64)
    torch.manual_seed(seed)
    model = rebuild(resolve_space("mlp"), LENET, input_shape=shape, num_classes=classes)
    ctx = Context(
        shape, splits.train.x[:CALIBRATION_EXAMPLES], calib_y=splits.train.y[:CALIBRATION_EXAMPLES]
    )
    if name == "dense":
        train(model, splits.train, cfg, seed=seed)
        return evaluate(model, splits.test), 0.0
    tech_name, extra = ROWS[name]
    tech, knobs = get(tech_name), {"sparsity": sparsity, **extra}
    hooks = tech.step_hooks(knobs, model, ctx)
    train(model, splits.train, cfg, seed=seed, on_step=lambda s, n: [h(s, n) for h in hooks])
    model = tech.apply(model, knobs, ctx)
    train(model, splits.train, finetune_config(cfg, finetune), seed=seed + 1)
    model = finish_sparse(model, {tech_name: knobs})
    return evaluate(model, splits.test), sparsity_of(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["mnist5k", "fashion-mnist"])
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--finetune", type=float, default=3)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for data in args.data:
        splits = load_data(DataConfig(name=data))
        for name in ["dense", *ROWS]:
            accs, sps = [], []
            for seed in args.seeds:
                a, sp = one(data, splits, name, seed, args.epochs, args.finetune, args.sparsity)
                accs.append(a)
                sps.append(sp)
            rows.append(
                {
                    "data": data,
                    "method": name,
                    "test_accuracy": statistics.mean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "all": accs,
                    "sparsity": statistics.mean(sps),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python benchmarks/sparsity.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "recipe": f"LeNet-300-100, Adam lr 0.002, batch 64, cosine; {args.epochs} epochs, then "
        f"{args.finetune} epochs with the zeros held (dense: {args.epochs} epochs only); "
        f"sparsity {args.sparsity}; seeds {args.seeds}",
    }
    out = ROOT / "benchmarks" / "results"
    (out / "sparsity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Unstructured sparsity at equal budget ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        meta["recipe"] + ".",
        "",
        "| data | method | sparsity | test accuracy (mean ± std) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['method']} | {r['sparsity']:.3f} | "
            f"{r['test_accuracy']:.4f} ± {r['std']:.4f} |"
        )
    (out / "sparsity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
