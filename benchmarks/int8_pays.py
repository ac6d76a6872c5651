"""Does int8 pay? fp32 vs int8 exports of small CNNs, before and after the measured float-op choice.

    python benchmarks/int8_pays.py [--rounds 7]

For a few model shapes the issue found int8 slower or barely faster on (three average pools, one
conv) and shapes where it pays (two convs + max-pool, a small MobileNet), on 512 Fashion-MNIST
training images as calibration data (random images when the dataset is missing; weights do not
change latency): the fp32 ONNX (BatchNorm folded), the int8 ONNX as the search builds it (stem
float, every other op quantized) and as `nas export` builds it (op types kept float where measured
faster, `tune_batch=64`). All three are timed in interleaved rounds (onnxruntime, 1 thread, median
of 20 runs per round, median of the rounds) at batch 64 and 1, and their file sizes are set beside
`size_bytes` of the model at 8 bits. Writes benchmarks/results/int8_pays.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas import onnx_utils  # noqa: E402
from nas.compress.fusion import fold_bn  # noqa: E402
from nas.compress.int8_export import export_int8, int8_record  # noqa: E402
from nas.compress.quant_ops import quantizable_layers  # noqa: E402
from objectives import count_flops, model_size_bytes  # noqa: E402

SHAPE = (1, 28, 28)
OUT = ROOT / "benchmarks" / "results"


def _block(cin: int, cout: int, pool: type[nn.Module] | None) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return layers + ([pool(2)] if pool else [])


def models() -> dict[str, nn.Module]:
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = {
        "two convs, max-pool": nn.Sequential(
            *_block(1, 16, nn.MaxPool2d), *_block(16, 32, nn.MaxPool2d), *head, nn.Linear(32, 10)
        ),
        "three convs, three avg-pools": nn.Sequential(
            *_block(1, 16, nn.AvgPool2d),
            *_block(16, 24, nn.AvgPool2d),
            *_block(24, 32, nn.AvgPool2d),
            *head,
            nn.Linear(32, 10),
        ),
        "one conv, flattened": nn.Sequential(
            *_block(1, 24, nn.MaxPool2d), nn.Flatten(), nn.Linear(24 * 14 * 14, 10)
        ),
    }
    import optuna

    from search_spaces import mobilenet

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    net["mobilenet, 2 stages"] = mobilenet(
        trial, input_shape=SHAPE, num_classes=10, stages=2, max_depth=1, se=False
    )
    for m in net.values():
        m.eval()
    return net


def calibration() -> tuple[torch.Tensor, str]:
    try:
        from nas.config import DataConfig, Subset
        from nas.data import load_data

        cfg = DataConfig(name="fashion-mnist", subset=Subset(train=512, val=64))
        return load_data(cfg).train.head(512).x, "fashion-mnist"
    except Exception:
        return torch.rand(512, *SHAPE), "random"


def _at_8_bits(model: nn.Module) -> nn.Module:
    marked = copy.deepcopy(model)
    for name in quantizable_layers(marked):
        marked.get_submodule(name).weight_bits = 8
    return marked


def measure(name: str, model: nn.Module, calib: torch.Tensor, rounds: int, tmp: Path) -> dict:
    t0 = time.perf_counter()
    fp32 = tmp / f"{name}.fp32.onnx"
    onnx_utils.to_onnx(fold_bn(model), SHAPE, fp32)
    plain = export_int8(model, SHAPE, calib, tmp / f"{name}.int8.onnx")
    tuned = export_int8(model, SHAPE, calib, tmp / f"{name}.tuned.onnx", tune_batch=64)
    tune_s = time.perf_counter() - t0
    files = {"fp32": fp32, "int8 (search)": plain, "int8 (export)": tuned}
    row: dict = {"model": name, "flops": count_flops(model, SHAPE), "tune_s": tune_s}
    for batch in (64, 1):
        sessions = {k: onnx_utils.session(p, threads=1) for k, p in files.items()}
        times: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(rounds):
            for k, sess in sessions.items():
                times[k].append(onnx_utils.time_ms(sess, SHAPE, batch, warmup=5, repeats=20))
        row[f"batch{batch}"] = {k: statistics.median(v) for k, v in times.items()}
    row["files"] = {k: p.stat().st_size for k, p in files.items()}
    row["size_bytes"] = {
        "fp32": model_size_bytes(model),
        "int8": model_size_bytes(_at_8_bits(model)),
    }
    row["record"] = int8_record(tuned)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    calib, data = calibration()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(models().items()):
            rows.append(measure(f"m{i}", model, calib, args.rounds, Path(tmp)))
            rows[-1]["model"] = name
            b = rows[-1]["batch64"]
            print(
                f"[int8] {name}: fp32 {b['fp32']:.3f} ms, int8 {b['int8 (search)']:.3f}, "
                f"tuned {b['int8 (export)']:.3f} (batch 64)",
                flush=True,
            )
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "calibration": data,
        "rounds": args.rounds,
        "command": "python benchmarks/int8_pays.py",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8_pays.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"# Does int8 pay? ({meta['date']}, {meta['machine']})",
        "",
        f"`{meta['command']}`: onnxruntime, 1 thread, median of {args.rounds} interleaved rounds "
        f"(each a median of 20 runs); calibration: {data}. Speed-up = fp32 ms / int8 ms (> 1: int8 "
        "is faster). int8 (search): stem float, every other op quantized; int8 (export): kinds "
        "of op (op types; convs split by shape) kept float where measured faster at batch 64.",
        "",
        "| model | multiply-adds | fp32 ms (b64) | int8 search: x (b64) | int8 export: x (b64) "
        "| kept float | fp32 ms (b1) | int8 export: x (b1) | files fp32 / int8 B | size_bytes "
        "fp32 / int8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b64, b1, f, s = r["batch64"], r["batch1"], r["files"], r["size_bytes"]
        lines.append(
            f"| {r['model']} | {r['flops']:,} | {b64['fp32']:.3f} | "
            f"{b64['fp32'] / b64['int8 (search)']:.2f} | {b64['fp32'] / b64['int8 (export)']:.2f} "
            f"| {', '.join(r['record']['float_ops']) or '-'} | {b1['fp32']:.4f} | "
            f"{b1['fp32'] / b1['int8 (export)']:.2f} | {f['fp32']:,} / {f['int8 (export)']:,} | "
            f"{s['fp32']:,} / {s['int8']:,} |"
        )
    (OUT / "int8_pays.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
