"""``params``: number of distinct trainable and frozen parameters (shared weights counted once),
as trained: BatchNorm included. The export folds BatchNorm into the layer before it and records
that count too, as ``params_deployed``."""

from __future__ import annotations

from torch import nn

from objectives.base import MeasureContext, Objective


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields shared tensors once


class Params(Objective):
    name = "params"
    direction = "minimize"
    needs_training = False
    description = "number of parameters as trained (BatchNorm included; shared weights once)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(count_params(model))
