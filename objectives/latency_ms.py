"""``latency_ms``: median latency of the deployed model (its ONNX export), warmed up.

``args``: ``device`` (``cpu``, the default: onnxruntime's CPU provider at ``threads`` threads,
default 1; ``cuda`` / ``cuda:N``: onnxruntime's CUDA provider when the installed onnxruntime has
it, else the torch model timed with CUDA events), ``batch_size`` (default 1), ``warmup``,
``repeats``. Where it was measured is recorded with every trial. Weights do not change fp32
latency, so it is measured before training.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import nas.onnx_utils as onnx_utils
from nas.errors import NasError
from objectives.base import MeasureContext, Objective


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@torch.no_grad()
def torch_cuda_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: str,
    batch: int,
    warmup: int,
    repeats: int,
) -> float:
    """Median forward time on a CUDA device, timed with CUDA events (the float model)."""
    import copy

    net = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, *input_shape, device=device)
    for _ in range(warmup):
        net(x)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        net(x)
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class LatencyMs(Objective):
    name = "latency_ms"
    direction = "minimize"
    needs_training = False
    unit = "ms"
    description = (
        "latency of the deployed model (median; args: device cpu|cuda, batch_size, threads)"
    )

    def check(self, args: Mapping[str, Any]) -> None:
        device = str(args.get("device", "cpu"))
        if device == "cpu":
            return
        if not device.startswith("cuda"):
            raise NasError(f"latency_ms: args.device must be cpu, cuda or cuda:N, got {device!r}")
        if not torch.cuda.is_available():
            raise NasError(
                f"latency_ms: args.device is {device!r} but torch sees no CUDA GPU here; use "
                f"device: cpu (onnxruntime on this CPU) or run on a GPU machine"
            )

    def measured_on(self, args: Mapping[str, Any]) -> str:
        device = str(args.get("device", "cpu"))
        batch = int(args.get("batch_size", 1))
        if device == "cpu":
            threads = int(args.get("threads", 1))
            return f"onnxruntime CPUExecutionProvider, {threads} thread(s), batch {batch}"
        name = torch.cuda.get_device_name(torch.device(device))
        how = "onnxruntime CUDAExecutionProvider" if _cuda_provider() else "torch, CUDA events"
        return f"{how} on {device} ({name}), batch {batch}"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        args = dict(ctx.args)
        self.check(args)
        device = str(args.get("device", "cpu"))
        batch, warmup = int(args.get("batch_size", 1)), int(args.get("warmup", 10))
        repeats = int(args.get("repeats", 30))
        if device.startswith("cuda") and not _cuda_provider():
            return torch_cuda_ms(model, ctx.input_shape, device, batch, warmup, repeats)
        deployed = ctx.onnx if ctx.onnx is not None else onnx_utils.to_onnx(model, ctx.input_shape)
        sess = onnx_utils.session(deployed, threads=int(args.get("threads", 1)), device=device)
        return onnx_utils.time_ms(
            sess, ctx.input_shape, batch_size=batch, warmup=warmup, repeats=repeats
        )
