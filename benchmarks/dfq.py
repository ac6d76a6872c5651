"""Int8 without data: naive dynamic int8 vs DFQ vs data-calibrated PTQ, on the mobilenet.

    python benchmarks/dfq.py [--epochs 3] [--train 20000]

The mobilenet of benchmarks/compression.py (inverted residuals, depthwise convs) trained on a
20k Fashion-MNIST subset, then exported four ways and evaluated in onnxruntime on the 10k test
images: fp32; naive no-data int8 (onnxruntime dynamic quantization, per-tensor weights, no
calibration); DFQ (cross-layer equalization + bias correction from BN statistics, then the same
dynamic int8: still no data); PTQ calibrated on 512 training images (static, per-channel,
min/max and 99.99th percentile). Writes benchmarks/results/dfq.json and dfq.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compression import ARCHS  # noqa: E402
from nas import onnx_utils  # noqa: E402
from nas.compress.dfq_ops import dfq, find_chains  # noqa: E402
from nas.compress.int8_export import export_int8, export_int8_dynamic  # noqa: E402
from nas.config import DataConfig, Subset, TrainConfig  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.pipeline import CALIBRATION_EXAMPLES  # noqa: E402
from nas.space import rebuild, resolve_space  # noqa: E402
from nas.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--train", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    splits = load_data(DataConfig(name="fashion-mnist", subset=Subset(train=args.train)))
    shape = splits.input_shape
    torch.manual_seed(0)
    model = rebuild(
        resolve_space("mobilenet"),
        ARCHS["mobilenet"],
        input_shape=shape,
        num_classes=splits.num_classes,
    )
    train(model, splits.train, TrainConfig(epochs=args.epochs, lr=0.004), seed=0)
    model.eval()
    calib = splits.train.x[:CALIBRATION_EXAMPLES]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        variants = {
            "fp32": lambda p: onnx_utils.to_onnx(model, shape, p),
            "int8, no data (naive dynamic)": lambda p: export_int8_dynamic(model, shape, p),
            "int8, no data, DFQ (CLE + bias correction)": lambda p: export_int8_dynamic(
                dfq(model), shape, p
            ),
            "int8 PTQ, 512 calibration images, min/max": lambda p: export_int8(
                model, shape, calib, p
            ),
            "int8 PTQ, 512 calibration images, percentile": lambda p: export_int8(
                model, shape, calib, p, calibration="percentile"
            ),
        }
        for i, (name, make) in enumerate(variants.items()):
            path = t / f"{i}.onnx"
            make(path)
            sess = onnx_utils.session(path.read_bytes(), threads=1)
            acc = onnx_utils.accuracy(sess, splits.test)
            rows.append({"variant": name, "test_accuracy": acc})
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python benchmarks/dfq.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "model": f"mobilenet {ARCHS['mobilenet']}; {len(find_chains(model))} equalized chains",
        "recipe": f"{args.train} training images, {args.epochs} epochs (Adam, cosine)",
    }
    out = ROOT / "benchmarks" / "results"
    (out / "dfq.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    fp32 = rows[0]["test_accuracy"]
    lines = [
        f"# Int8 without data: DFQ ({meta['date']})",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['model']}. {meta['recipe']}. Test accuracy in onnxruntime on 10,000 images.",
        "",
        "| variant | test accuracy | vs fp32 (pp) |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['test_accuracy']:.4f} | "
            f"{100 * (r['test_accuracy'] - fp32):+.2f} |"
        )
    (out / "dfq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
