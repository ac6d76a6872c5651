"""``tucker`` and ``cp``: tensor decomposition of conv kernels (TensorLy, PyTorch backend).

``tucker``: Tucker-2 on the channel modes, one conv becomes 1x1 -> k x k core -> 1x1.
``cp``: CP decomposition, one conv becomes 1x1 -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1.
Knob ``rank``: ratio in (0, 1] of the channels kept in the decomposition (per layer with
``per_layer: true``). Only convs whose decomposition has fewer multiply-adds are replaced; see
:mod:`nas.compress.decompose_ops`. Applied after training, then fine-tuned.
Exports: the decomposed model (fewer multiply-adds and parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from nas.compress._base import Context, Technique, rank_knob, round_to_knob
from nas.compress.decompose_ops import decompose, eligible_convs, ineligible


class _Decomposition(Technique):
    method: ClassVar[str]
    knobs = (
        rank_knob("ratio of each conv's channels kept in the decomposition"),
        round_to_knob("ranks"),
    )
    no_eligible_layer = (
        "no conv (k x k, ungrouped, 4+ input channels) that a decomposition would make cheaper"
    )
    per_layer_knob = "rank"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return eligible_convs(model, input_shape, self.method)

    def not_applicable(self, model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
        if self.eligible(model, input_shape):
            return None
        return f"{self.no_eligible_layer}: {ineligible(model)}"

    def _run(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context, fit: bool):
        rank, round_to = knobs["rank"], int(knobs.get("round_to", 1))
        per_layer = rank if isinstance(rank, Mapping) else None
        return decompose(
            model,
            self.method,
            1.0 if per_layer is not None else float(rank),
            ctx.input_shape,
            per_layer=per_layer,
            round_to=round_to,
            fit=fit,
        )

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return self._run(model, knobs, ctx, fit=True)

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """Exact shapes without fitting the decomposition (it needs the trained weights)."""
        return self._run(model, knobs, ctx, fit=False)


class Tucker(_Decomposition):
    name = "tucker"
    method = "tucker2"
    description = "Tucker-2 of conv kernels (TensorLy): 1x1 -> k x k core -> 1x1"
    exports = "the decomposed model (fewer MACs and parameters)"


class CP(_Decomposition):
    name = "cp"
    method = "cp"
    description = "CP decomposition of conv kernels (TensorLy): 1x1 -> kh x 1 -> 1 x kw -> 1x1"
    exports = "the decomposed model (fewer MACs and parameters)"
