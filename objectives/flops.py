"""``flops``: multiply-adds of one forward pass at batch 1, counted by fvcore.

fvcore counts one multiply-add as one flop. BatchNorm is not counted: in eval mode the ONNX export
folds it into the preceding convolution, so the deployed model does not run it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from objectives.base import MeasureContext, Objective

_IGNORED = ("aten::batch_norm",)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, (torch.zeros(1, *input_shape),))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        for op in _IGNORED:
            analysis.set_op_handle(op, lambda inputs, outputs: 0)  # None only hides warnings
        total = int(analysis.total())
    model.train(was_training)
    return total


class Flops(Objective):
    name = "flops"
    direction = "minimize"
    needs_training = False
    unit = "MAC"
    description = "multiply-adds per example (fvcore, batch 1, BN folded)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(count_flops(model, ctx.input_shape))
