"""``filter_pruning``: structured pruning of whole filters / neurons by an importance criterion.

Knobs: ``ratio`` (fraction of the prunable channels removed: one global ranking, or per layer with
``per_layer: true``) and ``criterion`` (``l1``, ``l2``, ``fpgm``, ``taylor``; a list searches
them). Channels tied through residual adds, BatchNorm, depthwise convs, concats and
squeeze-excite are removed together (Torch-Pruning's dependency graph); see
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
from nas.compress.channel_groups import analyse
from nas.compress.filter_pruning_ops import (
    CRITERIA,
    no_prunable_channels,
    prunable_layers,
    prune_filters,
)


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
        return prunable_layers(model, input_shape)

    def not_applicable(self, model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
        """The candidate is skipped when no channel can be pruned, naming what ties them (an
        unknown op only keeps the channels it touches: the rest are still pruned)."""
        analysis = analyse(model, input_shape)
        return None if analysis.groups else no_prunable_channels(analysis)

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
