"""``head_pruning``: whole attention heads and transformer-MLP neurons removed physically.

Knobs: ``heads`` and ``neurons`` (fractions removed per layer, at least one of each kept) and
``criterion`` (``l1`` weight norm or ``taylor``, gradient x weight on training batches). The q, k, v
and output projections and the MLP's two Linears shrink; see
:mod:`nas.compress.head_pruning_ops`. For the ``vit`` space; applied after training, then
fine-tuned. Exports: the physically smaller transformer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Technique, criterion_knob, fraction_knob
from nas.compress.head_pruning_ops import CRITERIA, attention_layers, mlp_layers, prune_heads


class HeadPruning(Technique):
    name = "head_pruning"
    description = "attention heads and transformer-MLP neurons removed (l1 or taylor importance)"
    knobs = (
        fraction_knob("heads", "attention heads removed per layer", (0.0, 0.5)),
        fraction_knob("neurons", "MLP hidden neurons removed per layer", (0.0, 0.5)),
        criterion_knob(CRITERIA, "importance: l1 weight norm, taylor (gradient x weight)"),
    )
    no_eligible_layer = "no attention layer (q, k, v, proj) or transformer MLP (use the vit space)"
    exports = "the physically smaller transformer (fewer heads, narrower MLPs)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return attention_layers(model) + mlp_layers(model)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        data = None
        if ctx.calib_x is not None and ctx.calib_y is not None:
            data = (ctx.calib_x, ctx.calib_y)
        return prune_heads(
            model,
            float(knobs["heads"]),
            float(knobs["neurons"]),
            criterion=str(knobs.get("criterion", "l1")),
            data=data,
        )

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """Exact shapes (per-layer counts depend only on the knobs); l1 needs no data."""
        return self.apply(model, {**knobs, "criterion": "l1"}, ctx)
