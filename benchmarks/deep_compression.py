"""Deep Compression on LeNet-300-100: ratio of model.dc to the fp32 weights, and accuracy.

    python benchmarks/deep_compression.py [--data mnist5k fashion-mnist] [--epochs 30]

LeNet-300-100 (the ``mlp`` space: 784-300-100-10) is trained twice with the same recipe and seed:
plainly, and with ``compression: {deep_compression: {sparsity, bits}}`` the way a trial runs it
(gradual magnitude pruning along training, k-means sharing of the surviving weights, a centroid
fine-tune, Huffman coding into model.dc). Reported: test accuracy of both, the model.dc size and
its ratio to the fp32 weights (Han et al. 2016: 40x at no loss on full MNIST), and whether the
decoded model's outputs equal the encoded one's. Writes benchmarks/results/deep_compression.json
and deep_compression.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.compress import Context, get  # noqa: E402
from nas.compress.dc_format import decode, encode  # noqa: E402
from nas.config import DataConfig, TrainConfig  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.pipeline import CALIBRATION_EXAMPLES, finetune_config, finish_sparse  # noqa: E402
from nas.space import rebuild, resolve_space  # noqa: E402
from nas.train import evaluate, train  # noqa: E402

LENET = {"depth": 2, "width_0": 300, "width_1": 100}
TARGET_RATIO = 35.0
GRID = [(0.9, 5), (0.92, 5), (0.92, 4), (0.94, 4)]  # (sparsity, bits) tried


def run(data: str, epochs: float, grid: list[tuple[float, int]], finetune: float) -> list[dict]:
    splits = load_data(DataConfig(name=data))
    shape, classes = splits.input_shape, splits.num_classes
    space = resolve_space("mlp")
    cfg = TrainConfig(epochs=epochs, lr=0.002, batch_size=64)
    torch.manual_seed(0)
    init = rebuild(space, LENET, input_shape=shape, num_classes=classes)
    plain = copy.deepcopy(init)
    train(plain, splits.train, cfg, seed=0)
    base = {"val": evaluate(plain, splits.val), "test": evaluate(plain, splits.test)}
    fp32 = 4 * sum(p.numel() for p in plain.parameters())
    ctx = Context(
        shape, splits.train.x[:CALIBRATION_EXAMPLES], calib_y=splits.train.y[:CALIBRATION_EXAMPLES]
    )
    rows = []
    for sparsity, bits in grid:
        t0 = time.time()
        tech, knobs = get("deep_compression"), {"sparsity": sparsity, "bits": bits}
        model = copy.deepcopy(init)
        hooks = tech.step_hooks(knobs, model, ctx)
        train(model, splits.train, cfg, seed=0, on_step=lambda s, n, h=hooks: [f(s, n) for f in h])
        pruned_acc = evaluate(model, splits.test)
        model = tech.apply(model, knobs, ctx)
        train(model, splits.train, finetune_config(cfg, finetune), seed=1)
        model = finish_sparse(model, {"deep_compression": knobs})
        encoded = encode(model)
        decoded = decode(encoded, rebuild(space, LENET, input_shape=shape, num_classes=classes))
        x = splits.test.x[:512]
        dc = {"val": evaluate(model, splits.val), "test": evaluate(model, splits.test)}
        rows.append(
            {
                "data": data,
                "train_images": len(splits.train),
                "test_images": len(splits.test),
                "epochs": epochs,
                "sparsity": sparsity,
                "bits": bits,
                "finetune_epochs": finetune,
                "baseline_val_accuracy": base["val"],
                "baseline_test_accuracy": base["test"],
                "pruned_test_accuracy": pruned_acc,
                "dc_val_accuracy": dc["val"],
                "dc_test_accuracy": dc["test"],
                "accuracy_loss_pp": 100 * (base["test"] - dc["test"]),
                "fp32_bytes": fp32,
                "dc_bytes": len(encoded),
                "ratio": fp32 / len(encoded),
                "decoded_outputs_equal": bool(torch.equal(decoded(x), model(x))),
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    # the setting a search would keep: the best validation accuracy at >= 35x
    ok = [r for r in rows if r["ratio"] >= TARGET_RATIO] or rows
    best = max(ok, key=lambda r: (r["dc_val_accuracy"], r["ratio"]))
    best["selected"] = True
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["mnist5k", "fashion-mnist"])
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--finetune", type=float, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [r for data in args.data for r in run(data, args.epochs, GRID, args.finetune)]
    meta = {
        "command": "python benchmarks/deep_compression.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "recipe": f"Adam lr 0.002, batch 64, cosine, {args.epochs} epochs; gradual magnitude "
        f"pruning (one global threshold) between 20 % and 70 % of training; k-means sharing; "
        f"{args.finetune}-epoch centroid fine-tune; (sparsity, bits) in {GRID}, the row kept "
        f"(*) is the best validation accuracy at >= {TARGET_RATIO:g}x",
    }
    out = ROOT / "benchmarks" / "results"
    (out / "deep_compression.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Deep Compression, LeNet-300-100 ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        meta["recipe"] + ".",
        "",
        "| data | sparsity, bits | baseline test acc | DC test acc | loss (pp) | DC val acc | "
        "model.dc bytes (fp32: weights) | ratio | decoded == encoded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        star = " *" if r.get("selected") else ""
        lines.append(
            f"| {r['data']} ({r['train_images']} train / {r['test_images']} test){star} | "
            f"{r['sparsity']:g}, {r['bits']} | {r['baseline_test_accuracy']:.4f} | "
            f"{r['dc_test_accuracy']:.4f} | {r['accuracy_loss_pp']:+.2f} | "
            f"{r['dc_val_accuracy']:.4f} | {r['dc_bytes']} ({r['fp32_bytes']}) | "
            f"{r['ratio']:.1f}x | {r['decoded_outputs_equal']} |"
        )
    (out / "deep_compression.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
