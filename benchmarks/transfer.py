"""Transfer learning: a Fashion-MNIST-trained backbone fine-tuned on MNIST 5k vs trained from
scratch at equal budget, both through ``base_model`` (the ``pretrained`` space's loader).

    python benchmarks/transfer.py [--epochs 1 3] [--seeds 0 1 2]

The backbone is the cnn of benchmarks/compression.py (32-64-64 channels), trained on a 20k
Fashion-MNIST subset for 3 epochs and saved as an export folder would hold it (config.json +
weights.safetensors). On MNIST 5k (3,600 training images) each budget trains (a) that backbone,
loaded with ``base_model``, and (b) the same architecture from a fresh initialisation, with the
same recipe and seed. Test accuracy on MNIST 5k's 1,000 test images, mean and spread over seeds.
Writes benchmarks/results/transfer.json and transfer.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compression import ARCHS  # noqa: E402
from nas.config import DataConfig, Subset, TrainConfig  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.space import rebuild, resolve_space  # noqa: E402
from nas.train import evaluate, train  # noqa: E402
from nas.weights import save_weights  # noqa: E402
from search_spaces.pretrained import pretrained  # noqa: E402

ARCH = ARCHS["cnn"]  # the cnn of benchmarks/compression.py (32-64-64 channels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = load_data(DataConfig(name="fashion-mnist", subset=Subset(train=20000)))
    target = load_data(DataConfig(name="mnist5k"))
    shape, classes = target.input_shape, target.num_classes
    space = resolve_space("cnn")
    backbone = rebuild(space, ARCH, input_shape=shape, num_classes=classes)
    t0 = time.time()
    train(backbone, source.train, TrainConfig(epochs=3, lr=0.004), seed=0)
    source_acc = evaluate(backbone, source.test)
    print(f"backbone: {source_acc:.4f} on Fashion-MNIST test ({time.time() - t0:.0f}s)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "backbone"
        export.mkdir()
        save_weights(backbone, export / "weights.safetensors")
        config = {
            "space": "cnn",
            "args": {},
            "params": ARCH,
            "input_shape": list(shape),
            "num_classes": classes,
        }
        (export / "config.json").write_text(json.dumps(config))
        for epochs in args.epochs:
            cfg = TrainConfig(epochs=epochs, lr=0.004)
            acc: dict[str, list[float]] = {"from scratch": [], "fine-tuned backbone": []}
            for seed in args.seeds:
                torch.manual_seed(seed)
                scratch = rebuild(space, ARCH, input_shape=shape, num_classes=classes)
                tuned = pretrained(
                    optuna.trial.FixedTrial({}),
                    input_shape=shape,
                    num_classes=classes,
                    path=str(export),
                )
                for name, model in (("from scratch", scratch), ("fine-tuned backbone", tuned)):
                    train(model, target.train, cfg, seed=seed)
                    acc[name].append(evaluate(model, target.test))
                print(epochs, seed, {k: v[-1] for k, v in acc.items()}, flush=True)
            rows.append(
                {
                    "epochs": epochs,
                    **{
                        k: {
                            "mean": statistics.mean(v),
                            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                            "all": v,
                        }
                        for k, v in acc.items()
                    },
                }
            )
    meta = {
        "command": "python benchmarks/transfer.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "backbone": {"arch": ARCH, "fashion_mnist_test_accuracy": source_acc},
        "recipe": "Adam, lr 0.004, cosine, batch 128; MNIST 5k: 3,600 train / 1,000 test images",
    }
    out = ROOT / "benchmarks" / "results"
    (out / "transfer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Transfer: Fashion-MNIST backbone -> MNIST 5k ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        f"Backbone: cnn 32-64-64, {source_acc:.4f} on Fashion-MNIST test. {meta['recipe']}; "
        f"seeds {args.seeds}.",
        "",
        "| epochs on MNIST 5k | from scratch | fine-tuned backbone (base_model) | gain (pp) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["from scratch"], r["fine-tuned backbone"]
        lines.append(
            f"| {r['epochs']:g} | {a['mean']:.4f} ± {a['std']:.4f} | "
            f"{b['mean']:.4f} ± {b['std']:.4f} | {100 * (b['mean'] - a['mean']):+.2f} |"
        )
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
