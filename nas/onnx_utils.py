"""ONNX export and onnxruntime timing/evaluation shared by objectives and export."""

from __future__ import annotations

import io
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

OPSET = 17


def to_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path | None = None
) -> bytes:
    """Export ``model`` (eval mode, dynamic batch) with the TorchScript exporter; return the bytes.

    The TorchScript exporter folds BatchNorm into the preceding conv in eval mode, so the ONNX graph
    is the model as deployed. It takes ~0.1 s where the dynamo exporter takes seconds.
    """
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *input_shape),),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    model.train(was_training)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def session(
    model: bytes | str | Path, threads: int = 1, device: str = "cpu"
):  # -> ort.InferenceSession
    """An onnxruntime session with a fixed thread count (sequential execution); on the CPU, or
    ``device="cuda[:N]"`` on onnxruntime's CUDA provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ort.InferenceSession(src, sess_options=opts, providers=providers)


def time_ms(
    sess, input_shape: tuple[int, ...], batch_size: int = 1, warmup: int = 10, repeats: int = 50
) -> float:
    """Median wall time of one forward pass in milliseconds, after warm-up."""
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch_size, *input_shape), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_spread(
    model: bytes | str | Path, input_shape: tuple[int, ...], batch_size: int, rounds: int = 5
) -> tuple[float, float]:
    """(median ms, relative spread) of a model over ``rounds`` medians of 20 runs (1 thread):
    the spread is half the range of the round medians over their median."""
    (times,) = _rounds([session(model, threads=1)], input_shape, batch_size, rounds)
    return _median_spread(times)


def faster(
    a: bytes | str | Path,
    b: bytes | str | Path,
    input_shape: tuple[int, ...],
    batch_size: int,
    rounds: int = 5,
) -> bool:
    """Whether model ``a`` is faster than ``b`` by more than the timing spread: both timed in
    alternating rounds (medians of 20 runs, 1 thread), so a busy machine slows both alike."""
    sessions = [session(a, threads=1), session(b, threads=1)]
    (ma, sa), (mb, sb) = map(_median_spread, _rounds(sessions, input_shape, batch_size, rounds))
    return ma < mb * (1 - max(sa, sb, 0.02))


def _rounds(
    sessions: list[Any], input_shape: tuple[int, ...], batch_size: int, rounds: int
) -> list[list[float]]:
    """Per session, ``rounds`` medians of 20 runs, the sessions taking turns in each round."""
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for sess, out in zip(sessions, times, strict=True):
            out.append(time_ms(sess, input_shape, batch_size, warmup=5, repeats=20))
    return times


def _median_spread(times: list[float]) -> tuple[float, float]:
    mid = statistics.median(times)
    return mid, (max(times) - min(times)) / 2 / mid


def accuracy(sess, split: Any, batch_size: int = 512) -> float:
    """Top-1 accuracy of an onnxruntime session on a split (in memory or streamed)."""
    name = sess.get_inputs()[0].name
    correct = 0
    for x, y, _ in split.loader(batch_size):
        logits = sess.run(None, {name: x.numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return correct / max(len(split), 1)
