"""``accuracy``: top-1 accuracy of the trained model on the evaluation split."""

from __future__ import annotations

from torch import nn

import nas.onnx_utils as onnx_utils
from nas.errors import NasError
from nas.train import evaluate
from objectives.base import MeasureContext, Objective


class Accuracy(Objective):
    name = "accuracy"
    direction = "maximize"
    needs_training = True
    description = "top-1 accuracy on the evaluation split (val in search, test at export)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        if ctx.split is None:
            raise NasError("accuracy needs an evaluation split; pass MeasureContext(split=...)")
        if ctx.onnx is not None:  # the deployed (e.g. int8) model, run by onnxruntime
            return onnx_utils.accuracy(onnx_utils.session(ctx.onnx), ctx.split)
        return evaluate(model, ctx.split)
