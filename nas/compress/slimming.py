"""``slimming``: network slimming (Liu et al. 2017).

During training an L1 penalty (knob ``strength``) drives BatchNorm scaling factors (gamma) to zero;
after training the channels with the smallest |gamma| (knob ``ratio``: the fraction removed, by a
global threshold, or per layer with ``per_layer: true``) are removed physically: the producing
conv's filters, the BN entries and the consuming layers' input channels. Channels tied through a
residual add, a depthwise conv, a concat or squeeze-excite are pruned together (Torch-Pruning's
dependency graph, :mod:`nas.compress.channel_groups`).
On a supernet's sub-network (``search.mode: supernet``) no candidate is trained: the channels
removed are the trailing ones, the supernet's importance order (every smaller sub-network trains
the leading channels), and BatchNorm statistics are re-estimated afterwards.
Exports: the physically smaller model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Knob, LossHook, Technique, fraction_knob, round_to_knob
from nas.compress.slimming_ops import bn_l1_penalty, slim, slimmable_bns


class Slimming(Technique):
    name = "slimming"
    description = "BN-gamma L1 during training, then low-|gamma| channels removed physically"
    knobs = (
        fraction_knob("ratio", "fraction of slimmable channels removed"),
        Knob(
            "strength",
            "float",
            (0.0, 1.0),
            (1e-5, 1e-3),
            log=True,
            help="L1 penalty on BN gammas during training",
        ),
        round_to_knob("kept channels"),
    )
    no_eligible_layer = (
        "the model has no BatchNorm after a prunable conv (network slimming needs them)"
    )
    per_layer_knob = "ratio"
    exports = "the physically smaller model (fewer channels)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return slimmable_bns(model, input_shape)

    def loss_hooks(self, knobs: Mapping[str, Any], ctx: Context) -> list[LossHook]:
        strength, shape = float(knobs["strength"]), ctx.input_shape
        return [lambda model: bn_l1_penalty(model, strength, shape)] if strength > 0 else []

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        ratio, round_to = knobs["ratio"], int(knobs.get("round_to", 1))
        per_layer = ratio if isinstance(ratio, Mapping) else None
        return slim(
            model,
            0.0 if per_layer is not None else float(ratio),
            ctx.input_shape,
            per_layer=per_layer,
            round_to=round_to,
            by_position=ctx.leading_channels,
        )

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """Before training the gammas are all equal: estimate with the ratio applied per layer."""
        ratio = knobs["ratio"]
        per_layer = (
            ratio
            if isinstance(ratio, Mapping)
            else dict.fromkeys(slimmable_bns(model, ctx.input_shape), float(ratio))
        )
        return slim(
            copy.deepcopy(model),
            0.0,
            ctx.input_shape,
            per_layer=per_layer,
            round_to=int(knobs.get("round_to", 1)),
        )
