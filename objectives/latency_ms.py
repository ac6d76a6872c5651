"""``latency_ms``: median onnxruntime latency of the model's ONNX export on this CPU.

Fixed thread count (``threads``, default 1), warm-up, median of ``repeats``; ``batch_size``
default 1. Weights do not change fp32 latency, so it is measured before training.
"""

from __future__ import annotations

from torch import nn

from nas import onnx_utils
from objectives.base import MeasureContext, Objective


class LatencyMs(Objective):
    name = "latency_ms"
    direction = "minimize"
    needs_training = False
    unit = "ms"
    description = "onnxruntime CPU latency of the ONNX export (median, args: batch_size, threads)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        args = dict(ctx.args)
        deployed = ctx.onnx if ctx.onnx is not None else onnx_utils.to_onnx(model, ctx.input_shape)
        sess = onnx_utils.session(deployed, threads=int(args.get("threads", 1)))
        return onnx_utils.time_ms(
            sess,
            ctx.input_shape,
            batch_size=int(args.get("batch_size", 1)),
            warmup=int(args.get("warmup", 10)),
            repeats=int(args.get("repeats", 30)),
        )
