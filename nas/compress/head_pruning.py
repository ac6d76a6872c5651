"""``head_pruning``: whole attention heads and transformer-MLP neurons removed physically.

Knobs: ``heads`` and ``neurons`` (fractions removed per layer, at least one of each kept) and
``criterion`` (``l1`` weight norm or ``taylor``, gradient x weight on training batches). The q, k, v
(or fused qkv) and output projections and the MLP's two Linears shrink; see
:mod:`nas.compress.head_pruning_ops`. For the ``vit`` space and timm ViTs; a model with an
attention layer or MLP it cannot shrink is refused. Applied after training, then fine-tuned.
Exports: the physically smaller transformer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Technique, criterion_knob, fraction_knob
from nas.compress.head_pruning_ops import (
    CRITERIA,
    attention_layers,
    mlp_layers,
    prune_heads,
    unsupported_layers,
)


class HeadPruning(Technique):
    name = "head_pruning"
    description = "attention heads and transformer-MLP neurons removed (l1 or taylor importance)"
    knobs = (
        fraction_knob("heads", "attention heads removed per layer", (0.0, 0.5)),
        fraction_knob("neurons", "MLP hidden neurons removed per layer", (0.0, 0.5)),
        criterion_knob(CRITERIA, "importance: l1 weight norm, taylor (gradient x weight)"),
    )
    no_eligible_layer = (
        "no attention layer (q, k, v or qkv, proj) or transformer MLP (fc1, fc2): use a "
        "transformer space (vit, or a timm ViT)"
    )
    exports = "the physically smaller transformer (fewer heads, narrower MLPs)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return attention_layers(model) + mlp_layers(model)

    def not_applicable(self, model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
        """A layer with heads or an MLP this technique cannot shrink refuses the model (pruning
        the others alone would leave it out silently)."""
        unknown = unsupported_layers(model)
        if unknown:
            return (
                f"cannot remove heads / neurons of {unknown[0]}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                + ": it needs q, k, v or a fused qkv with attn_dim, and proj (MLP: fc1, fc2), "
                "with no norm or gate over the heads' or neurons' width"
            )
        return super().not_applicable(model, input_shape)

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
