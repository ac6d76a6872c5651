"""Compression knobs on fixed architectures: accuracy, cost and measured latency.

    python benchmarks/compression.py [--epochs 3] [--train 20000]
    python benchmarks/compression.py --configs filters --name filter_pruning   # some rows only

For one fixed ``cnn`` and one fixed ``mobilenet`` on Fashion-MNIST: the baseline, network slimming
at several ratios (one sparsity training, then slim + fine-tune per ratio), low-rank at several
ranks (kept channels and ranks rounded to multiples of 8, the search's default, and once without,
to show why), filter pruning of half the prunable channels by each importance criterion, Tucker-2
and CP decompositions at two ranks, and bit widths (8 = real int8 in onnxruntime, 4 = packed
weights, simulated compute). Every row is measured the way the search measures: test accuracy of
the deployed model, fvcore multiply-adds, params, size_bytes, onnxruntime latency at batch 1 and 64
with 1 thread (median). Writes benchmarks/results/compression.json and compression.md."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas import onnx_utils  # noqa: E402
from nas.compress import ORDER, Context, get  # noqa: E402
from nas.config import DataConfig, Subset, TrainConfig  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.pipeline import (  # noqa: E402
    CALIBRATION_EXAMPLES,
    as_deployed,
    finetune_config,
    int8_onnx,
)
from nas.space import rebuild, resolve_space  # noqa: E402
from nas.train import evaluate, train  # noqa: E402
from objectives import count_flops, count_params, model_size_bytes  # noqa: E402

ARCHS = {
    "cnn": {
        "depth": 3,
        "width_0": 32,
        "kernel_0": 3,
        "pool_0": "max",
        "width_1": 64,
        "kernel_1": 3,
        "pool_1": "max",
        "width_2": 64,
        "kernel_2": 3,
        "pool_2": "none",
    },
    "mobilenet": {
        "width_mult": 1.0,
        "se": False,
        "depth_s0": 1,
        "expand_s0": 1,
        "kernel_s0": 3,
        "depth_s1": 2,
        "expand_s1": 4,
        "kernel_s1": 3,
        "depth_s2": 2,
        "expand_s2": 4,
        "kernel_s2": 3,
    },
}
ROWS = [
    ("baseline", {}),
    ("slimming 0.3", {"slimming": {"ratio": 0.3, "strength": 1e-4, "round_to": 8}}),
    ("slimming 0.5", {"slimming": {"ratio": 0.5, "strength": 1e-4, "round_to": 8}}),
    (
        "slimming 0.5, channels not rounded",
        {"slimming": {"ratio": 0.5, "strength": 1e-4, "round_to": 1}},
    ),
    ("slimming 0.7", {"slimming": {"ratio": 0.7, "strength": 1e-4, "round_to": 8}}),
    ("lowrank 0.5", {"lowrank": {"rank": 0.5, "round_to": 8}}),
    ("lowrank 0.5, ranks not rounded", {"lowrank": {"rank": 0.5, "round_to": 1}}),
    ("lowrank 0.25", {"lowrank": {"rank": 0.25, "round_to": 8}}),
    *[
        (f"filters 0.5 {c}", {"filter_pruning": {"ratio": 0.5, "criterion": c, "round_to": 8}})
        for c in ("l1", "l2", "fpgm", "taylor")
    ],
    *[(f"{m} {r}", {m: {"rank": r, "round_to": 8}}) for m in ("tucker", "cp") for r in (0.5, 0.25)],
    ("int8", {"quantize": {"bits": 8}}),
    ("4-bit (simulated)", {"quantize": {"bits": 4}}),
    (
        "slimming 0.5 + int8",
        {"slimming": {"ratio": 0.5, "strength": 1e-4, "round_to": 8}, "quantize": {"bits": 8}},
    ),
]


def measure(model: torch.nn.Module, compression: dict, splits, shape) -> dict[str, float]:
    ctx = Context(shape, splits.train.x[:CALIBRATION_EXAMPLES])
    plain = as_deployed(model, compression)
    onnx = int8_onnx(plain, compression, ctx) or onnx_utils.to_onnx(plain, shape)
    sess = onnx_utils.session(onnx, threads=1)
    return {
        "test_accuracy": onnx_utils.accuracy(sess, splits.test),
        "flops": count_flops(plain, shape),
        "params": count_params(plain),
        "size_bytes": model_size_bytes(model),
        "onnx": onnx,  # timed later, all models together (see time_all)
    }


def time_all(rows: list[dict], shape: tuple[int, ...], rounds: int = 5) -> None:
    """Latency of every row's deployed model: interleaved rounds, the minimum of the medians.

    Timing right after training reads high (busy threads) and this machine is shared, so all
    models are timed together once training is over, each round visiting every model.
    """
    torch.set_num_threads(1)
    sessions = [onnx_utils.session(r.pop("onnx"), threads=1) for r in rows]
    for key, batch, repeats in (("latency_ms_b1", 1, 200), ("latency_ms_b64", 64, 20)):
        best = [float("inf")] * len(rows)
        for _ in range(rounds):
            for i, sess in enumerate(sessions):
                best[i] = min(best[i], onnx_utils.time_ms(sess, shape, batch, 5, repeats))
        for r, t in zip(rows, best, strict=True):
            r[key] = t


def run_arch(
    name: str, splits, cfg: TrainConfig, finetune: float, configs: list[str]
) -> list[dict]:
    shape = splits.input_shape
    base = rebuild(resolve_space(name), ARCHS[name], input_shape=shape, num_classes=10)
    trained: dict[float, torch.nn.Module] = {}  # by slimming strength (0 = plain training)
    rows = []
    for label, compression in [r for r in ROWS if any(r[0].startswith(c) for c in configs)]:
        strength = compression.get("slimming", {}).get("strength", 0.0)
        if strength not in trained:
            model = copy.deepcopy(base)
            hooks = get("slimming").loss_hooks({"strength": strength}) if strength else []
            t0 = time.time()
            train(model, splits.train, cfg, seed=0, loss_hooks=hooks)
            print(
                f"[{name}] trained (L1 {strength:g}) in {time.time() - t0:.0f}s, val "
                f"{evaluate(model, splits.val):.4f}",
                flush=True,
            )
            trained[strength] = model
        model = copy.deepcopy(trained[strength])
        ctx = Context(
            shape,
            splits.train.x[:CALIBRATION_EXAMPLES],
            calib_y=splits.train.y[:CALIBRATION_EXAMPLES],
        )
        for tech in ORDER:
            if tech in compression:
                model = get(tech).apply(model, compression[tech], ctx)
        before_ft = None
        if compression:
            before_ft = evaluate(model, splits.test)
            train(model, splits.train, finetune_config(cfg, finetune), seed=1)
        model.nas_compression = compression
        row = {
            "arch": name,
            "config": label,
            **measure(model, compression, splits, shape),
            "test_accuracy_before_finetune": before_ft,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "onnx"}), flush=True)
    time_all(rows, shape)
    b = rows[0]
    for r in rows:
        r["flops_reduction"] = 1 - r["flops"] / b["flops"]
        r["latency_b64_reduction"] = 1 - r["latency_ms_b64"] / b["latency_ms_b64"]
        r["speedup_b64"] = b["latency_ms_b64"] / r["latency_ms_b64"]
        r["latency_over_flops_reduction"] = (
            r["latency_b64_reduction"] / r["flops_reduction"]
            if r["flops_reduction"] > 0.01
            else None
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--finetune", type=float, default=1)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument(
        "--configs", nargs="+", default=[""], help="only rows whose label starts with one of these"
    )
    ap.add_argument("--name", default="compression", help="results/NAME.json and NAME.md")
    args = ap.parse_args()
    if args.configs[0] != "" and "baseline" not in args.configs:
        args.configs.insert(0, "baseline")  # the reductions are relative to it
    torch.set_num_threads(2)
    splits = load_data(DataConfig(name="fashion-mnist", subset=Subset(train=args.train)))
    cfg = TrainConfig(epochs=args.epochs, lr=0.004)
    rows = [r for a in args.archs for r in run_arch(a, splits, cfg, args.finetune, args.configs)]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/compression.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, 2 cores",
        "date": time.strftime("%Y-%m-%d"),
        "recipe": f"{args.train} training images, {args.epochs} epochs (Adam, cosine); "
        f"{args.finetune} epoch fine-tune after compression; latency: onnxruntime, "
        f"1 thread, median of repeats, min over 5 interleaved rounds",
    }
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [
        f"# Compression on fixed architectures ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        meta["recipe"],
        "",
        "| arch | config | test acc | acc before fine-tune | MACs | params | size B | lat b1 ms "
        "| lat b64 ms | FLOPs -% | lat b64 -% | lat/FLOPs reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['config']} | {r['test_accuracy']:.4f} | "
            f"{f(r['test_accuracy_before_finetune'], '.4f')} | {r['flops']:.0f} | "
            f"{r['params']:.0f} | {r['size_bytes']:.0f} | {r['latency_ms_b1']:.3f} | "
            f"{r['latency_ms_b64']:.2f} | {100 * r['flops_reduction']:.0f} | "
            f"{100 * r['latency_b64_reduction']:.0f} | "
            f"{f(r['latency_over_flops_reduction'], '.2f')} |"
        )
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
