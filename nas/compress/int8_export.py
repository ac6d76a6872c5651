"""Real int8 export: onnxruntime's static quantization (QDQ format) of a model's ONNX graph,
calibrated on a few batches, or dynamic quantization with no data; the exported graph runs int8
kernels (see :func:`int8_ops`). Fake-quant training and packed storage are in ``quant_ops.py``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.compress.fusion import fuse_verified
from nas.compress.quant_ops import _is_qat, strip_qat

_FIRST_LAYER_CHANNELS = 4  # convs with fewer input channels per group stay fp32 in int8 export
_CALIB_BATCH = 64

__all__ = ["export_int8", "export_int8_dynamic", "int8_ops", "int8_record"]

# ---------------------------------------------------------------------------------------------
# real int8 export (onnxruntime static quantization, QDQ format)
# ---------------------------------------------------------------------------------------------


def export_int8(
    model: nn.Module,
    input_shape: tuple[int, ...],
    calib_x: torch.Tensor,
    path: str | Path,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    calibration: str = "minmax",
    float_stem: bool = True,
    tune_batch: int | None = None,
) -> Path:
    """Write a real int8 ONNX model (QDQ format) of ``model`` to ``path`` and return the path.

    Steps: QAT layers are stripped to their fake-quantized float weights, BatchNorm is folded
    (:func:`~nas.compress.fusion.fold_bn`), the fp32 graph is exported with
    :func:`nas.onnx_utils.to_onnx` and quantized by ``onnxruntime.quantization.quantize_static``
    with QuantFormat.QDQ, QInt8 symmetric weights (per output channel unless ``per_channel`` is
    False), QUInt8 activations and MinMax ranges calibrated on ``calib_x`` (``(N, *input_shape)``,
    a few hundred training examples are plenty).

    With ``float_stem`` (the default; the ``stem`` knob of ``quantize`` and ``ptq``), ungrouped
    convs with fewer than 4 input channels (the input layer of image models) stay fp32:
    onnxruntime's int8 kernel for them is several times slower than its fp32 one. Where
    such a conv is followed by ReLU then MaxPool, the two are swapped (exact: max commutes with a
    monotone function) so that onnxruntime does not move the following QuantizeLinear in front
    of the MaxPool, where a slow uint8 NCHW MaxPool would run. ``reduce_range`` (7-bit weights)
    is for CPUs without VNNI, where uint8 x int8 products can saturate.

    With ``tune_batch`` (what ``nas export`` does), the choice is measured at that batch size
    (onnxruntime, 1 thread): each kind of op (the op type; convs split into depthwise, grouped,
    1x1 and the rest) is kept float, one kind at a time and the convs and matrix products last,
    where that makes the graph faster by more than the timing spread (e.g. QLinearAveragePool, or
    a depthwise int8 conv); then int8 is timed against fp32. The file's metadata (``nas.int8``,
    JSON) records the kinds kept float and both latencies, and ``pays`` false when int8 is still
    not faster (see :func:`int8_record`).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    import nas.onnx_utils as onnx_utils

    input_shape = tuple(input_shape)
    if calib_x.dim() != len(input_shape) + 1 or tuple(calib_x.shape[1:]) != input_shape:
        raise ValueError(
            f"export_int8: calib_x must have shape (N, *input_shape) = (N, "
            f"{', '.join(map(str, input_shape))}), got {tuple(calib_x.shape)}; pass a batch of "
            "training inputs"
        )
    if len(calib_x) == 0:
        raise ValueError("export_int8: calib_x is empty; pass a few hundred training inputs")

    plain = strip_qat(model) if _is_qat(model) else model
    # a folding bug shows on any input: a few suffice (this runs once per int8 candidate)
    folded, _ = fuse_verified(plain, calib_x[:32])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx_utils.to_onnx(folded, input_shape, fp32)
        keep_fp32 = _prepare_graph(fp32) if float_stem else []
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference only: ORT's graph optimisations happen at load time anyway
        quant_pre_process(str(fp32), str(prepared), skip_optimization=True)

        def quantize(exclude: list[str], out: Path) -> Path:
            quantize_static(
                str(prepared),
                str(out),
                _BatchReader(calib_x),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=(
                    CalibrationMethod.Percentile
                    if calibration == "percentile"
                    else CalibrationMethod.MinMax
                ),
                extra_options={"CalibPercentile": 99.99} if calibration == "percentile" else {},
                nodes_to_exclude=keep_fp32 + exclude,
            )
            return out

        if tune_batch is None:
            return quantize([], path)
        _tuned(prepared, quantize, input_shape, tune_batch, Path(tmp), path)
    return path


_COSTLY = ("Conv (depthwise)", "Conv (grouped)", "Conv (1x1)", "Conv", "Gemm", "MatMul")
_TUNE_REPEATS = 5  # interleaved rounds of a median of 20 runs each


def _kinds(graph) -> dict[str, list[str]]:
    """Node names by kind: the op type, convs split into depthwise, grouped, 1x1 and the rest
    (their int8 kernels differ most: onnxruntime's depthwise int8 conv can be 4x slower)."""
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    kinds: dict[str, list[str]] = {}
    for node in graph.node:
        kind, conv = node.op_type, _conv_weight(node, weights)
        if conv is not None:
            dims, group = conv
            if group > 1:
                kind = "Conv (depthwise)" if dims[1] == 1 else "Conv (grouped)"
            elif all(d == 1 for d in dims[2:]):
                kind = "Conv (1x1)"
        kinds.setdefault(kind, []).append(node.name)
    return kinds


def _tuned(prepared: Path, quantize, shape, batch: int, tmp: Path, path: Path) -> None:
    """Quantize ``prepared`` into ``path``, each kind of op kept float where that is measurably
    faster (the cheap kinds first, then the convs and matrix products); record the decision in
    the file's metadata."""
    import json

    import onnx

    import nas.onnx_utils as onnx_utils

    kinds = _kinds(onnx.load(str(prepared)).graph)
    order = sorted(k for k in kinds if k not in _COSTLY) + [k for k in _COSTLY if k in kinds]
    best = quantize([], tmp / "int8-all.onnx")
    kept: list[str] = []
    for i, kind in enumerate(order):
        names = [n for k in [*kept, kind] for n in kinds[k]]
        trial = quantize(names, tmp / f"int8-{i}.onnx")
        if onnx_utils.faster(trial, best, shape, batch, _TUNE_REPEATS):
            best, kept = trial, [*kept, kind]
    fp32_ms, fp32_spread = onnx_utils.time_spread(prepared, shape, batch, _TUNE_REPEATS)
    int8_ms, int8_spread = onnx_utils.time_spread(best, shape, batch, _TUNE_REPEATS)
    record = {
        "batch": batch,
        "float_ops": kept,
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "pays": int8_ms < fp32_ms,
        "spread": max(fp32_spread, int8_spread),
    }
    model = onnx.load(str(best))
    entry = model.metadata_props.add()
    entry.key, entry.value = INT8_METADATA, json.dumps(record)
    onnx.save(model, str(path))


INT8_METADATA = "nas.int8"


def int8_record(model: bytes | str | Path) -> dict | None:
    """What :func:`export_int8` measured (``tune_batch``): op types kept float, fp32 and int8
    latency in ms at ``batch``, ``pays`` (int8 faster); ``None`` for an untuned file."""
    import json

    import onnx

    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    raw = next((p.value for p in m.metadata_props if p.key == INT8_METADATA), None)
    return None if raw is None else json.loads(raw)


def export_int8_dynamic(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Int8 with NO data: onnxruntime dynamic quantization of the (BN-folded) fp32 export:
    per-tensor symmetric int8 weights, activation ranges computed at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import nas.onnx_utils as onnx_utils
    from nas.compress.fusion import fold_bn

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx_utils.to_onnx(
            fold_bn(strip_qat(model) if _is_qat(model) else model), input_shape, fp32
        )
        quantize_dynamic(str(fp32), str(path), per_channel=False, weight_type=QuantType.QInt8)
    return path


class _BatchReader:
    """A ``CalibrationDataReader``: ``{"input": batch}`` dicts over ``calib_x``, then None."""

    def __init__(self, x: torch.Tensor, batch_size: int = _CALIB_BATCH) -> None:
        data = x.detach().to(torch.float32).cpu().numpy()
        self._batches = iter(
            [{"input": data[i : i + batch_size]} for i in range(0, len(data), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def _prepare_graph(path: Path) -> list[str]:
    """Pick the convs to keep fp32 and swap ReLU -> MaxPool after them; save; return their names."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    keep = []
    for node in graph.node:
        conv = _conv_weight(node, weights)
        if conv is None:
            continue
        dims, group = conv
        if group == 1 and len(dims) > 1 and dims[1] < _FIRST_LAYER_CHANNELS:
            keep.append(node.name)
    if keep:
        _swap_relu_maxpool(graph, {n.output[0] for n in graph.node if n.name in keep})
        onnx.save(model, str(path))
    return keep


def _conv_weight(node, weights: dict[str, tuple[int, ...]]) -> tuple[tuple[int, ...], int] | None:
    """A Conv node's weight shape and group count (``None`` for other nodes, or a weight that is
    not an initializer)."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return None
    return weights[node.input[1]], next((a.i for a in node.attribute if a.name == "group"), 1)


def _swap_relu_maxpool(graph, after: set[str]) -> None:
    """Rewrite ``x -> Relu -> MaxPool`` as ``x -> MaxPool -> Relu`` where ``x`` is in ``after``."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    swapped: set[str] = set()
    for relu in graph.node:
        if relu.op_type != "Relu" or relu.input[0] not in after or relu.output[0] in outputs:
            continue
        users = consumers.get(relu.output[0], [])
        if len(users) != 1 or users[0].op_type != "MaxPool" or len(users[0].output) != 1:
            continue
        pool = users[0]
        x, mid, out = relu.input[0], relu.output[0], pool.output[0]
        pool.input[0], pool.output[0] = x, mid
        relu.input[0], relu.output[0] = mid, out
        swapped.add(mid)
    if swapped:  # each Relu now follows its MaxPool; ``mid`` changed shape
        kept = [v for v in graph.value_info if v.name not in swapped]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        _toposort(graph)


def _toposort(graph) -> None:
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        assert ready, "graph has a cycle"
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [n for n in pending if n not in ready]
    copies = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def int8_ops(path: str | Path | bytes) -> set[str]:
    """The op types in an ONNX model's graph (e.g. QuantizeLinear, DequantizeLinear, Conv)."""
    import onnx

    model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path))
    return {node.op_type for node in model.graph.node}
