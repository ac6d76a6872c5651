"""``lowrank``: truncated-SVD factorization of Linear and conv layers into two thinner layers.

Knob ``rank``: a ratio of each layer's full rank, in (0, 1]. A k x k conv becomes a k x k conv with
r outputs followed by a 1x1 conv; a Linear becomes two Linears. Layers where the factorization
would not reduce multiply-adds are left alone. ``per_layer: true`` samples one ratio per layer.
Exports: the factorized model (really fewer multiply-adds and parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Technique, rank_knob, round_to_knob
from nas.compress.lowrank_ops import eligible_layers, factorize


class LowRank(Technique):
    name = "lowrank"
    description = "truncated SVD of Linear/conv layers into two thinner layers"
    knobs = (
        rank_knob("ratio of each layer's full rank"),
        round_to_knob("ranks"),
    )
    no_eligible_layer = "no Linear/conv layer that a factorization would make cheaper"
    per_layer_knob = "rank"
    exports = "the factorized model (fewer MACs and parameters)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return eligible_layers(model, input_shape)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        rank, round_to = knobs["rank"], int(knobs.get("round_to", 1))
        if isinstance(rank, Mapping):
            return factorize(model, 1.0, ctx.input_shape, per_layer=rank, round_to=round_to)
        return factorize(model, float(rank), ctx.input_shape, round_to=round_to)
