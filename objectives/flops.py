"""``flops``: multiply-adds of one forward pass at batch 1, counted by fvcore.

fvcore counts one multiply-add as one flop. BatchNorm is not counted: in eval mode the ONNX export
folds it into the preceding convolution, so the deployed model does not run it.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from objectives.base import MeasureContext, Objective

_IGNORED = ("aten::batch_norm",)


def flops_by_module(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """fvcore's multiply-adds at batch 1 per module name (``""``: the whole model), BN not
    counted; the model's train/eval mode is kept."""
    with warnings.catch_warnings():  # fvcore scripts a loss with torch.jit on import
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, (torch.zeros(1, *input_shape),))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            for op in _IGNORED:
                analysis.set_op_handle(op, lambda inputs, outputs: 0)  # None only hides warnings
            return dict(analysis.by_module())
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    return int(flops_by_module(model, input_shape)[""])


class Flops(Objective):
    name = "flops"
    direction = "minimize"
    needs_training = False
    unit = "MAC"
    description = "multiply-adds per example (fvcore, batch 1, BN folded)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(count_flops(model, ctx.input_shape))
