"""Export selected trials as deployable models, re-measured after export.

For each model: ``model.onnx`` (fp32, BN folded, dynamic batch), ``weights.safetensors``,
``config.json`` (space, args, params, input shape: enough to rebuild an uncompressed model with
``nas.space.rebuild``; the compression applied), ``metrics.json`` (search-time and re-measured).
A compressed model also gets ``model.pt`` (the whole module: its shapes changed), an 8-bit one
``model.int8.onnx`` (real int8, what is deployed and verified), a model below 8 bits
``weights.packed.safetensors`` (the weights at their bit width; inference dequantizes them), an
unstructured-pruned one ``weights.sparse.safetensors`` (CSR layers where smaller), a weight-shared
one ``weights.shared.safetensors`` (bit-packed indices + codebooks), a Deep
Compression one ``model.dc`` (Huffman-coded, checked to decode to the same tensors).
The deployed ONNX model is re-evaluated on the test split with onnxruntime; if its accuracy differs
from the recorded test accuracy by more than ``export.tolerance`` the export fails and nothing of
that model is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

import nas.onnx_utils as onnx_utils
from nas.compress import Context, as_deployed
from nas.compress.fusion import fuse_verified
from nas.compress.int8_export import int8_record
from nas.data import Splits
from nas.pipeline import CALIBRATION_EXAMPLES, int8_onnx
from nas.run_folder import select_points, trial_model
from nas.search._problem import Point
from nas.space import rebuild_from_config
from nas.weights import module_path, weights_path
from objectives import count_flops, count_params, model_size_bytes

if TYPE_CHECKING:
    from nas.front import Front
    from nas.run_folder import RunFolder as Run


SPREAD = "latency_spread_batch"  # + B: the relative timing spread of latency_ms_batch{B}


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce the recorded accuracy."""


def deployed_onnx(
    model: nn.Module, splits: Splits, folder: Path, tune_batch: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write the model as deployed to ``folder``: ``model.onnx`` (fp32, BN folded, checked) and,
    for an int8 model, ``model.int8.onnx`` (with ``tune_batch``: ops whose int8 kernel is slower
    at that batch kept float, by measurement). Returns the deployed file and the fusion record,
    which holds the parameter count after folding (``params``)."""
    compression = dict(getattr(model, "nas_compression", {}))
    plain = as_deployed(model, compression)
    int8 = int8_onnx(
        plain,
        compression,
        Context(splits.input_shape, splits.train.head(CALIBRATION_EXAMPLES).x),
        tune_batch=tune_batch,
    )
    # conv/Linear + BN folded here, checked on test inputs (to 1e-4 of the largest output)
    fused, fusion = fuse_verified(plain, splits.test.head(256).x)
    fusion["params"] = count_params(fused)
    onnx_utils.to_onnx(fused, splits.input_shape, folder / "model.onnx")
    if int8 is None:
        return folder / "model.onnx", fusion
    (folder / "model.int8.onnx").write_bytes(int8)
    return folder / "model.int8.onnx", fusion


def latencies(path: Path, input_shape: tuple[int, ...], batches: Sequence[int]) -> dict[str, float]:
    """``latency_ms_batch{B}`` of an ONNX file (onnxruntime, 1 thread, warmed up, median of 5
    rounds of 20 runs) and ``latency_spread_batch{B}``, half the range of the rounds over the
    median: what a cost comparison must see past (:func:`nas.front.cost_disagreements`)."""
    out = {}
    for b in batches:
        ms, spread = onnx_utils.time_spread(path, input_shape, b)
        out[f"latency_ms_batch{b}"], out[f"{SPREAD}{b}"] = ms, spread
    return out


def _weights_source(run: Run, number: int) -> tuple[dict[str, Any] | None, Path]:
    """A trial's ``nas finalize`` record (or None) and the folder its exported weights come
    from: ``RUN_DIR/final`` once finalized, else the run folder."""
    from nas.run_folder import final_root, read_final

    final = read_final(run.dir, number)
    return final, final_root(run.dir) if final else run.dir


def export_point(run: Run, p: Point, dest: Path) -> dict[str, Any]:
    """Export one trial to ``dest`` (its finalized model when ``nas finalize`` made one); return
    its metrics record."""
    final, root = _weights_source(run, p.number)
    src = weights_path(root, p.number)
    splits = run.splits
    model = trial_model(run, p, root)
    compression = dict(getattr(model, "nas_compression", {}))
    tmp = Path(tempfile.mkdtemp(prefix=f".trial-{p.number}-", dir=dest.parent))
    try:
        packed_sizes: dict[str, float] = {}
        if "quantize" in compression:
            from nas.compress.quant_ops import pack_weights, packed_size_bytes

            below8 = any(getattr(m, "weight_bits", 32) < 8 for m in model.modules())
            packed = pack_weights(model) if below8 else {}
            if packed:  # weights below 8 bits, stored at their width (8 bits: model.int8.onnx)
                from safetensors.torch import save_file

                save_file(packed, str(tmp / "weights.packed.safetensors"))
                packed_sizes = {
                    "packed_weights_bytes": float(packed_size_bytes(model)),  # codes+scales+biases
                    "packed_file_bytes": float((tmp / "weights.packed.safetensors").stat().st_size),
                }
        batch = run.exp.export.latency_batch_size
        model_file, fusion = deployed_onnx(model, splits, tmp, tune_batch=batch)
        dc_sizes: dict[str, float] = {}
        if "deep_compression" in compression:
            dc_sizes = write_dc(model, tmp / "model.dc")
        elif "weight_sharing" in compression:
            from safetensors.torch import save_file

            from nas.compress.sparse_ops import to_shared_state

            shared = tmp / "weights.shared.safetensors"
            save_file(to_shared_state(model), str(shared))
            dc_sizes = {"shared_file_bytes": float(shared.stat().st_size)}
        elif any(getattr(m, "sparse_weight", False) for m in model.modules()):
            from safetensors.torch import save_file

            from nas.compress.sparse_ops import to_sparse_state

            save_file(to_sparse_state(model), str(tmp / "weights.sparse.safetensors"))
            dc_sizes = {
                "sparse_file_bytes": float((tmp / "weights.sparse.safetensors").stat().st_size)
            }
        shutil.copyfile(src, tmp / "weights.safetensors")
        if compression:
            shutil.copyfile(module_path(root, p.number), tmp / "model.pt")
        sess = onnx_utils.session(model_file, threads=1)
        acc = onnx_utils.accuracy(sess, splits.test)
        recorded = (final["metrics"] if final else p.metrics).get("test_accuracy")
        tol = run.exp.export.tolerance
        tuned = int8_record(model_file) if model_file.name == "model.int8.onnx" else None
        if recorded is not None and abs(acc - recorded) > tol and tuned and tuned["float_ops"]:
            # the kinds kept float moved the accuracy: deploy the int8 graph the search measured
            model_file, fusion = deployed_onnx(model, splits, tmp)
            sess = onnx_utils.session(model_file, threads=1)
            acc = onnx_utils.accuracy(sess, splits.test)
            fusion["int8_tuning_dropped"] = f"it moved test accuracy by more than {tol:.3f}"
            tuned = None  # the search's int8 graph: nothing measured, nothing kept float
        if recorded is not None and abs(acc - recorded) > tol:
            raise ExportVerificationError(
                f"trial {p.number}: the exported ONNX model scores {acc:.4f} on the test split, "
                f"the {'finalized' if final else 'trained'} model {recorded:.4f} (more than "
                f"{tol:.3f} apart); not exported"
            )
        exported = {
            "test_accuracy": acc,
            "flops": float(count_flops(model, splits.input_shape)),
            "params": float(count_params(model)),  # as trained: BatchNorm included
            "params_deployed": float(fusion["params"]),  # after BatchNorm folding
            "size_bytes": float(model_size_bytes(model)),  # tensors at their stored width
            "onnx_file_bytes": float(model_file.stat().st_size),
            "fusion": fusion,
            **packed_sizes,
            **dc_sizes,
            **latencies(model_file, splits.input_shape, sorted({1, batch})),
        }
        if tuned is not None:
            exported["int8"] = tuned
        weights = "search"
        if final:
            from nas.report import describe_budget

            weights = f"finalized: {describe_budget(final)}"
        config = {
            "trial": p.number,
            "experiment": run.exp.name,
            "space": run.exp.space.name,
            "args": run.exp.space.args,
            "params": p.params,
            "input_shape": list(splits.input_shape),
            "num_classes": splits.num_classes,
            "dataset": run.exp.data.name,
            "input": "float32 tensor (batch, *input_shape), preprocessed as 'preprocessing' says",
            "preprocessing": splits.preprocessing,
            "onnx": {
                "opset": onnx_utils.OPSET,
                "input": "input",
                "output": "logits",
                "deployed": model_file.name,
            },
            "compression": compression,
            "weights": weights,
        }
        metrics = {"search": p.metrics, "exported": exported}
        if final:
            metrics["final"] = final["metrics"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {
        "trial": p.number,
        **exported,
        "search_test_accuracy": p.metrics.get("test_accuracy"),
        "recorded_test_accuracy": recorded,
        "weights": weights,
    }


def write_dc(model: nn.Module, path: Path) -> dict[str, float]:
    """``model.dc`` (Deep Compression), checked: decoded into a zeroed copy of the model it gives
    exactly the same tensors. Returns its size and its ratio to the fp32 weights."""
    import copy

    import torch

    from nas.compress.dc_format import decode, encode

    data = encode(model)
    path.write_bytes(data)
    blank = copy.deepcopy(model)
    with torch.no_grad():
        for p in blank.parameters():
            p.zero_()
    decoded = decode(path.read_bytes(), blank).state_dict()
    for name, t in model.state_dict().items():
        if not torch.equal(decoded[name].to(t.dtype), t):
            raise ExportVerificationError(
                f"model.dc does not decode to the model ({name} differs); not exported"
            )
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    return {"dc_file_bytes": float(len(data)), "dc_ratio_vs_fp32": fp32 / len(data)}


def export_selected(
    run: Run,
    front: Front,
    to: str | Path | None,
    select: str | Sequence[int] | None,
    *,
    progress: bool = True,
) -> list[Path]:
    """Export the selected trials under ``to`` (default ``RUN_DIR/exports``); return their dirs."""
    points = select_points(run, front, select)
    out = Path(to) if to is not None else run.dir / "exports"
    out.mkdir(parents=True, exist_ok=True)
    records, dirs = [], []
    for i, p in enumerate(points, 1):
        dest = out / f"trial-{p.number:05d}"
        records.append(export_point(run, p, dest))
        dirs.append(dest)
        if progress:
            r = records[-1]
            print(
                f"[export] {i}/{len(points)} trial {p.number}: "
                f"test accuracy {r['test_accuracy']:.4f}"
                f" (recorded {r['recorded_test_accuracy']:.4f}; weights: {r['weights']}) -> {dest}",
                flush=True,
            )
            if r.get("int8") and not r["int8"]["pays"]:
                q = r["int8"]
                print(
                    f"[export] trial {p.number}: int8 does not pay here: {q['int8_ms']:.3g} ms "
                    f"vs fp32 {q['fp32_ms']:.3g} ms at batch {q['batch']} (kept float: "
                    f"{', '.join(q['float_ops']) or 'nothing'}); model.onnx is the fp32 model",
                    flush=True,
                )
    flags = _cost_agreement(run, front, records)
    for rec, dest in zip(records, dirs, strict=True):
        rec["costs_disagree"] = flags.get(rec["trial"])
        path = dest / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["costs_disagree"] = rec["costs_disagree"]
        path.write_text(json.dumps(metrics, indent=2))
        if progress and rec["costs_disagree"]:
            print(f"[export] trial {rec['trial']}: costs disagree: {rec['costs_disagree']}")
    (out / "summary.json").write_text(json.dumps(records, indent=2))
    return dirs


def _cost_agreement(run: Run, front: Front, records: list[dict[str, Any]]) -> dict[int, str]:
    """Per exported model, where its multiply-adds and its measured latency disagree, relative to
    the front's largest model (counted and timed here too when it is not exported)."""
    from nas.front import cost_disagreements

    if not front.points:
        return {}
    largest = max(front.points, key=lambda q: q.metrics.get("flops", 0.0))
    rows = {r["trial"]: r for r in records}
    if largest.number not in rows and "flops" in largest.metrics:
        model = trial_model(run, largest, _weights_source(run, largest.number)[1])
        shape, batch = run.splits.input_shape, run.exp.export.latency_batch_size
        with tempfile.TemporaryDirectory() as tmp:
            path, _ = deployed_onnx(model, run.splits, Path(tmp))
            rows[largest.number] = {
                "flops": float(count_flops(model, shape)),
                **latencies(path, shape, sorted({1, batch})),
            }
    return {
        n: msg for n, msg in cost_disagreements(rows).items() if n in {r["trial"] for r in records}
    }


def load_dc(folder: str | Path) -> nn.Module:
    """The model of an export folder's ``model.dc``, rebuilt from its ``config.json``."""
    from nas.compress.dc_format import DCFormatError, decode

    folder = Path(folder)
    dc, config_file = folder / "model.dc", folder / "config.json"
    if not dc.is_file() or not config_file.is_file():
        raise DCFormatError(
            f"{folder} has no model.dc and config.json; pass a folder that `nas export` wrote "
            "for a deep_compression trial"
        )
    config = json.loads(config_file.read_text())
    return decode(dc.read_bytes(), rebuild_from_config(config))
