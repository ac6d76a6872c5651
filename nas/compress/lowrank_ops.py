"""Low-rank factorization: a Linear or conv layer becomes two thinner layers from a truncated SVD.

A weight ``W`` (``out x in``; a conv's ``N x C x k x k`` read as ``N x C*k*k``) is factored as
``W = U S V^T`` and truncated to rank ``r``. The layer becomes ``LowRank(first, second)`` with
``first = sqrt(S) V^T`` (``in -> r``, no bias; for a conv the original kernel, stride, padding and
dilation) and ``second = U sqrt(S)`` (``r -> out``, a 1x1 conv for convs, the original bias). By
Eckart-Young this is the best rank-``r`` approximation of ``W`` in the Frobenius norm.

Per output position the layer costs ``in * out`` multiply-adds before and ``r * (in + out)`` after,
so a layer is only replaced where ``r * (in + out) < in * out`` (fewer multiply-adds and fewer
weights). The positions (rows of a Linear's input, the spatial size of a conv's output) come from
forward hooks on a dummy input; a layer the forward pass never calls costs nothing, is not eligible
and is left alone.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LowRank", "eligible_layers", "factorize", "factorize_layer"]

_Layer = nn.Linear | nn.Conv1d | nn.Conv2d
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)  # exact types: subclasses may override forward


class LowRank(nn.Sequential):
    """Two thinner layers standing in for one Linear/conv; ``self[0].lowrank_rank`` is the rank."""

    def __repr__(self) -> str:
        first, second = self[0], self[1]
        if isinstance(first, nn.Linear):
            shape = f"{first.in_features}->{second.out_features}"
        else:
            kernel = "x".join(str(k) for k in first.kernel_size)
            shape = f"{first.in_channels}->{second.out_channels}, {kernel}"
        return f"LowRank({type(first).__name__} {shape}, rank={first.lowrank_rank})"


@dataclass
class _Cost:
    """One candidate layer: its matrix shape and the output positions it computes per example."""

    module: nn.Module
    in_dim: int  # in_features, or C * prod(kernel)
    out_dim: int  # out_features, or N
    positions: int = 0  # summed over calls at batch 1; 0 when the forward pass never calls it

    @property
    def full_rank(self) -> int:
        return min(self.in_dim, self.out_dim)

    def macs(self, rank: int | None = None) -> int:
        """Multiply-adds per example, unchanged (``rank=None``) or factorized at ``rank``."""
        per_position = (
            self.in_dim * self.out_dim if rank is None else rank * (self.in_dim + self.out_dim)
        )
        return self.positions * per_position

    def pays(self, rank: int) -> bool:
        return self.macs(rank) < self.macs()


def eligible_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of Linear and (non-grouped) Conv1d/Conv2d layers that a factorization at SOME rank
    would make cheaper in multiply-adds.

    Some rank means rank 1: a layer is eligible when ``in + out < in * out`` (``in`` =
    in_features or ``C * prod(kernel)``, ``out`` = out_features or N) and the forward pass on a
    ``(1, *input_shape)`` input calls it. Names are in ``model.named_modules()`` order; a model
    that is itself such a layer is named ``""``. ``model`` is left as it was.
    """
    costs = _layer_costs(model, _check_input_shape(input_shape))
    return [name for name, cost in costs.items() if cost.pays(1)]


def factorize(
    model: nn.Module,
    rank: float,
    input_shape: tuple[int, ...],
    *,
    per_layer: Mapping[str, float] | None = None,
    round_to: int = 1,
) -> nn.Module:
    """Return a NEW model (deepcopy; input untouched) where each eligible layer is replaced by two
    thinner layers from a truncated SVD.

    Args:
        rank: ratio in (0, 1] of each layer's full rank ``min(out, in * prod(kernel))``; a layer
            gets ``r = max(1, round(ratio * full_rank))``.
        input_shape: one example's shape, for the dummy forward pass that sizes each layer.
        per_layer: layer name -> ratio, overriding ``rank`` for those layers. Keys must name
            Linear/Conv1d/Conv2d layers of ``model``.
        round_to: ``r`` is rounded up to a multiple of this (capped at the full rank), so that
            runtimes' blocked conv kernels stay fast on the thin middle layer.

    A layer is replaced (by a ``LowRank`` under the same name) only when ``r`` gives strictly
    fewer multiply-adds than the layer has, so FLOPs and parameters never grow and ``rank=1.0``
    returns an unchanged copy.
    """
    _check_ratio("rank", rank)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"factorize: round_to must be an int >= 1, got {round_to!r}; pass e.g. 8")
    input_shape = _check_input_shape(input_shape)
    overrides = dict(per_layer or {})
    for name, ratio in overrides.items():
        _check_ratio(f"per_layer[{name!r}]", ratio)

    new = copy.deepcopy(model)
    costs = _layer_costs(new, input_shape)
    unknown = [name for name in overrides if name not in costs]
    if unknown:
        valid = [name for name, cost in costs.items() if cost.pays(1)]
        raise ValueError(
            f"factorize: per_layer keys must name Linear/Conv1d/Conv2d layers of the model, got "
            f"{unknown[0]!r}; use names from eligible_layers(model, input_shape): {valid}"
        )

    for name, cost in costs.items():
        r = _rank_of(overrides.get(name, rank), cost.full_rank)
        r = min(cost.full_rank, -(-r // round_to) * round_to)
        if not cost.pays(r):
            continue
        replacement = factorize_layer(cost.module, r)
        if name == "":
            return replacement
        _replace(new, cost.module, replacement)
    return new


def factorize_layer(layer: _Layer, rank: int) -> LowRank:
    """The ``LowRank`` pair for ``layer`` at an absolute ``rank``, whether or not it pays.

    ``rank`` must lie in ``[1, min(out, in * prod(kernel))]``; at the full rank the pair reproduces
    ``layer`` up to float error. ``layer`` is not changed.
    """
    if type(layer) not in _LAYER_TYPES or getattr(layer, "groups", 1) != 1:
        raise TypeError(
            f"factorize_layer: layer must be an nn.Linear or an ungrouped nn.Conv1d/nn.Conv2d, "
            f"got {layer!r}; depthwise and grouped convs cannot be factored this way"
        )
    weight = layer.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1)
    full = min(matrix.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(
            f"factorize_layer: rank must be an int in [1, {full}] for {layer!r}, got "
            f"rank={rank!r}; pass a rank within the layer's full rank"
        )

    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(weight.dtype)  # (r, in)
    second_w = (u[:, :rank] * root[None, :]).to(weight.dtype)  # (out, r)
    factory = {"device": weight.device, "dtype": weight.dtype}
    bias = layer.bias is not None

    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False, **factory)
        second = nn.Linear(rank, layer.out_features, bias=bias, **factory)
    else:
        conv = type(layer)
        first = conv(
            layer.in_channels,
            rank,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
            **factory,
        )
        second = conv(rank, layer.out_channels, 1, bias=bias, **factory)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if bias:
            second.bias.copy_(layer.bias.detach())
    for part in (first, second):
        part.lowrank_rank = rank
    pair = LowRank(first, second)
    pair.train(layer.training)
    return pair


def _layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, _Cost]:
    """Every Linear/ungrouped conv by name, with its output positions from one dummy forward."""
    costs: dict[str, _Cost] = {}
    for name, module in model.named_modules():
        if type(module) not in _LAYER_TYPES or getattr(module, "groups", 1) != 1:
            continue
        weight = module.weight
        costs[name] = _Cost(module, math.prod(weight.shape[1:]), weight.shape[0])

    def count(cost: _Cost):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            cost.positions += output.numel() // cost.out_dim

        return hook

    handles = [c.module.register_forward_hook(count(c)) for c in costs.values()]
    modes = {m: m.training for m in model.modules()}
    reference = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape)
    if reference is not None:
        x = x.to(device=reference.device, dtype=reference.dtype)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return costs


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered (a module shared by two parents gets one pair)."""
    for parent in model.modules():
        for attr, child in list(parent._modules.items()):  # named_children() skips repeats
            if child is old:
                setattr(parent, attr, new)


def _rank_of(ratio: float, full_rank: int) -> int:
    return min(full_rank, max(1, round(ratio * full_rank)))


def _check_ratio(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise ValueError(
            f"factorize: {name} must be a ratio in (0, 1] of the layer's full rank, got "
            f"{name}={value!r}; pass e.g. 0.25 (1.0 keeps every layer)"
        )


def _check_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"lowrank: input_shape must be a non-empty tuple of positive ints (one example, no "
            f"batch), got input_shape={input_shape!r}; pass e.g. (1, 28, 28)"
        )
    return shape
