"""Attention-head and transformer-MLP pruning: whole heads and hidden neurons removed physically.

An attention layer is any module with Linear ``q``, ``k``, ``v`` (``dim -> heads * head_dim``) and
``proj`` (``heads * head_dim -> dim``) and ints ``num_heads``, ``head_dim``
(``search_spaces/vit.py`` ``Attention``). Removing head ``h`` removes its ``head_dim`` rows of
``q``, ``k``, ``v`` (weights and biases) and the matching columns of ``proj``; ``num_heads``
shrinks. A transformer MLP is any module with Linear ``fc1`` (``dim -> hidden``) and ``fc2``
(``hidden -> dim``); removing a neuron removes its row of ``fc1`` and column of ``fc2``.

Importance (per layer; the lowest go): ``l1``, the L1 norm of the weights removed with the head or
neuron; ``taylor``, ``(sum w * dL/dw)^2`` over those weights, accumulated over batches of training
data (Molchanov et al. 2019). Every layer keeps at least one head and one neuron.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn

from nas.compress._batches import over_batches

CRITERIA = ("l1", "taylor")

__all__ = ["CRITERIA", "attention_layers", "mlp_layers", "prune_heads"]


def _is_attention(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q", "k", "v", "proj")) and (
        isinstance(getattr(m, "num_heads", None), int)
        and isinstance(getattr(m, "head_dim", None), int)
    )


def _is_mlp(m: nn.Module) -> bool:
    fc1, fc2 = getattr(m, "fc1", None), getattr(m, "fc2", None)
    return (
        isinstance(fc1, nn.Linear)
        and isinstance(fc2, nn.Linear)
        and fc1.out_features == fc2.in_features
    )


def attention_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _is_attention(m)]


def mlp_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _is_mlp(m)]


def _head_parts(attn: nn.Module) -> Iterator[tuple[torch.Tensor, int]]:
    """(tensor, dim along which heads are laid out) of every parameter a head owns."""
    for name in ("q", "k", "v"):
        lin = getattr(attn, name)
        yield lin.weight, 0
        if lin.bias is not None:
            yield lin.bias, 0
    yield attn.proj.weight, 1


def _neuron_parts(mlp: nn.Module) -> Iterator[tuple[torch.Tensor, int]]:
    yield mlp.fc1.weight, 0
    if mlp.fc1.bias is not None:
        yield mlp.fc1.bias, 0
    yield mlp.fc2.weight, 1


def _per_unit(t: torch.Tensor, dim: int, units: int) -> torch.Tensor:
    """Sum of ``t`` per unit (a unit is ``size / units`` consecutive entries along ``dim``)."""
    t = t.detach().float().movedim(dim, 0)
    return t.reshape(units, -1).sum(1)


def _l1(parts: Iterator[tuple[torch.Tensor, int]], units: int) -> torch.Tensor:
    return sum(_per_unit(t.abs(), d, units) for t, d in parts)  # type: ignore[return-value]


def _taylor(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch: int = 64
) -> dict[str, torch.Tensor]:
    attn = {n: m for n, m in model.named_modules() if _is_attention(m)}
    mlps = {n: m for n, m in model.named_modules() if _is_mlp(m)}
    acc: dict[str, torch.Tensor] = {}

    def add() -> None:
        for kind, layers, parts, units in (
            ("heads", attn, _head_parts, lambda m: m.num_heads),
            ("neurons", mlps, _neuron_parts, lambda m: m.fc1.out_features),
        ):
            for n, m in layers.items():
                s = sum(
                    _per_unit(t * t.grad, d, units(m)) for t, d in parts(m) if t.grad is not None
                )
                key = f"{kind}:{n}"
                acc[key] = acc.get(key, 0) + torch.as_tensor(s).pow(2)

    over_batches(model, data, add, backward=True, batch=batch)
    return acc


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    n = len(scores)
    remove = min(math.floor(ratio * n + 1e-9), n - 1)
    order = sorted(range(n), key=lambda i: (float(scores[i]), i))
    return torch.tensor(sorted(order[remove:]), dtype=torch.long)


def _slice(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    w = lin.weight.detach().index_select(dim, idx).clone()
    lin.weight = nn.Parameter(w)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach().index_select(0, idx).clone())
        lin.out_features = len(idx)
    else:
        lin.in_features = len(idx)


def prune_heads(
    model: nn.Module,
    heads: float,
    neurons: float,
    *,
    criterion: str = "l1",
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """A NEW model with ``heads`` of every attention layer's heads and ``neurons`` of every MLP's
    hidden neurons removed (fractions in [0, 1); at least one of each kept)."""
    for name, v in (("heads", heads), ("neurons", neurons)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
            raise ValueError(f"head pruning: {name} must be a fraction in [0, 1), got {v!r}")
    if criterion not in CRITERIA:
        raise ValueError(
            f"head pruning: unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}"
        )
    if not attention_layers(model) and not mlp_layers(model):
        raise ValueError(
            f"head pruning: {type(model).__name__} has no attention layer (q, k, v, proj) and no "
            "transformer MLP (fc1, fc2); use it with the vit space"
        )
    taylor: dict[str, torch.Tensor] = {}
    if criterion == "taylor":
        if data is None or len(data[0]) == 0:
            raise ValueError(
                "head pruning: the taylor criterion needs labelled training examples; none given"
            )
        taylor = _taylor(model, data)
    new = copy.deepcopy(model)
    for n in attention_layers(new):
        m = new.get_submodule(n)
        s = taylor.get(f"heads:{n}")
        keep = _keep(s if s is not None else _l1(_head_parts(m), m.num_heads), heads)
        rows = torch.cat([torch.arange(h * m.head_dim, (h + 1) * m.head_dim) for h in keep])
        for lin in (m.q, m.k, m.v):
            _slice(lin, rows, 0)
        _slice(m.proj, rows, 1)
        m.num_heads = len(keep)
    for n in mlp_layers(new):
        m = new.get_submodule(n)
        s = taylor.get(f"neurons:{n}")
        keep = _keep(s if s is not None else _l1(_neuron_parts(m), m.fc1.out_features), neurons)
        _slice(m.fc1, keep, 0)
        _slice(m.fc2, keep, 1)
    return new
