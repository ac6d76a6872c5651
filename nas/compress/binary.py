"""``binarize``: binary (sign, Rastegari et al. 2016) or ternary (TWN, Li et al. 2016) weights.

During the fine-tune every Linear / conv weight except the first and the last layer's (kept in
float, as is usual for binary networks) is replaced in the forward pass by

- binary: ``alpha * sign(w)`` with ``alpha = mean |w|`` per output channel;
- ternary: ``alpha * sign(w)`` where ``|w| > delta`` and 0 elsewhere, ``delta = 0.7 mean |w|``
  and ``alpha`` the mean ``|w|`` above ``delta``, per output channel;

with a straight-through estimator (the float weights keep learning). ``activations: binary``
also feeds those layers ``sign(x)`` (straight-through, gradient clipped to ``|x| <= 1``). The layers
carry ``weight_bits`` 1 or 2, which ``size_bytes`` counts (plus a float32 ``alpha`` per output
channel). Compute is SIMULATED: the exported ONNX model multiplies floats equal to those values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.compress._base import Context, Knob, Technique
from nas.compress.sparse_ops import StraightThrough, prunable_weights

MODES = ("binary", "ternary")


def _per_channel_mean(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(1).reshape(-1, *([1] * (t.dim() - 1)))


def binarize(w: torch.Tensor, mode: str) -> torch.Tensor:
    """The binary / ternary value of ``w`` (no gradient trick)."""
    a = w.abs()
    if mode == "binary":
        return _per_channel_mean(a) * torch.sign(w)
    delta = 0.7 * _per_channel_mean(a)
    keep = (a > delta).to(w.dtype)
    alpha = _per_channel_mean(a * keep) / _per_channel_mean(keep).clamp_min(1e-12)
    return alpha * torch.sign(w) * keep


class BinaryWeight(nn.Module):
    """Parametrization: forward value binarized, gradient straight through."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(w, binarize(w.detach(), self.mode))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class BinaryActivation(nn.Module):
    """``sign(x)`` (+1 / -1) with a clipped straight-through gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        return _SignSTE.apply(x)


def binarize_model(model: nn.Module, mode: str, *, activations: str = "float") -> nn.Module:
    """Binary / ternary weights (and optionally activations) on every Linear / conv layer but the
    first and the last, IN PLACE. Returns ``model``."""
    if mode not in MODES:
        raise ValueError(f"binarize: mode must be binary or ternary, got {mode!r}")
    layers = prunable_weights(model)
    if len(layers) < 3:
        raise ValueError(
            "binarize: the model needs at least three Linear/conv layers (the first and the last "
            "stay in float); use a deeper model"
        )
    for name in layers[1:-1]:
        module = model.get_submodule(name)
        parametrize.register_parametrization(module, "weight", BinaryWeight(mode))
        module.weight_bits = 1 if mode == "binary" else 2
        if activations == "binary":
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Sequential(BinaryActivation(), module))
    return model


class Binarize(Technique):
    name = "binarize"
    description = "binary (sign) or ternary (TWN) weights with straight-through training"
    knobs = (
        Knob("mode", "choice", (0.0, 0.0), ("binary",), options=MODES, help="binary or ternary"),
        Knob(
            "activations",
            "choice",
            (0.0, 0.0),
            ("float",),
            options=("float", "binary"),
            help="binary activations too (sign, straight-through)",
        ),
    )
    no_eligible_layer = "fewer than three Linear/conv layers (the first and last stay float)"
    exports = "weights at 1 (binary) or 2 (ternary) bits + per-channel scales (simulated compute)"
    min_finetune = 0.5  # the straight-through training adapts the float weights to the signs

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        layers = prunable_weights(model)
        return layers[1:-1] if len(layers) >= 3 else []

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return binarize_model(
            copy.deepcopy(model),
            str(knobs["mode"]),
            activations=str(knobs.get("activations", "float")),
        )

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        out = copy.deepcopy(model)
        for name in self.eligible(out, ctx.input_shape):
            out.get_submodule(name).weight_bits = 1 if knobs["mode"] == "binary" else 2
        return out
