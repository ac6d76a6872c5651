"""``filter_pruning``: structured pruning of whole filters / neurons by an importance criterion.

Knobs: ``ratio`` (fraction of the prunable channels removed: one global ranking, or per layer with
``per_layer: true``) and ``criterion`` (``l1``, ``l2``, ``fpgm``, ``taylor``; a list searches
them). Channels tied through residual adds, BatchNorm, depthwise convs and squeeze-excite are
removed together (dependency groups from the traced graph); see
:mod:`nas.compress.filter_pruning_ops`. Applied after training, then fine-tuned.
Exports: the physically smaller model (fewer filters, channels and neurons).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import (
    Context,
    Technique,
    criterion_knob,
    fraction_knob,
    round_to_knob,
)
from nas.compress.filter_pruning_ops import CRITERIA, prunable_layers, prune_filters
from nas.compress.slimming_ops import unsupported_ops


class FilterPruning(Technique):
    name = "filter_pruning"
    description = "whole filters / neurons removed by L1, L2, FPGM or Taylor importance"
    knobs = (
        fraction_knob("ratio", "fraction of prunable channels removed"),
        criterion_knob(
            CRITERIA, "importance: l1 / l2 norm, fpgm, taylor (grad x weight), energy-aware l1"
        ),
        round_to_knob("kept channels"),
    )
    no_eligible_layer = "no conv / Linear whose output channels can shrink"
    per_layer_knob = "ratio"
    exports = "the physically smaller model (fewer filters / neurons)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return prunable_layers(model)

    def not_applicable(self, model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
        """An op the dependency analysis does not recognise skips the candidate (its channels
        would be kept, so the model would still be right, but the user should know)."""
        unknown = unsupported_ops(model)
        if unknown:
            # a layer, when one is among them, says more than an anonymous op such as getitem
            first = next((u for u in unknown if u.startswith("module ")), unknown[0])
            return (
                f"filter pruning cannot follow channels through {first}"
                + (f" (and {len(unknown) - 1} more op(s))" if len(unknown) > 1 else "")
                + "; write the model with standard layers (nn.Conv2d, nn.BatchNorm2d, ReLU-like "
                "activations, pooling, +, *) or drop filter_pruning for this space"
            )
        return super().not_applicable(model, input_shape)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        ratio = knobs["ratio"]
        data = None
        if ctx.calib_x is not None and ctx.calib_y is not None:
            data = (ctx.calib_x, ctx.calib_y)
        per_layer = ratio if isinstance(ratio, Mapping) else None
        return prune_filters(
            model,
            0.0 if per_layer is not None else float(ratio),
            ctx.input_shape,
            criterion=str(knobs.get("criterion", "l1")),
            per_layer=per_layer,
            data=data,
            round_to=int(knobs.get("round_to", 1)),
        )

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """Before training the ranking is unknown, so are the kept counts per layer of a global
        ranking: estimated with ``l1`` on the initial weights (it needs no data)."""
        return self.apply(copy.deepcopy(model), {**knobs, "criterion": "l1"}, ctx)
