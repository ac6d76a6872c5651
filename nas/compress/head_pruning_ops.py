"""Attention-head and transformer-MLP pruning: whole heads and hidden neurons removed physically.

An attention layer is any module with ints ``num_heads``, ``head_dim`` and Linear ``proj``
(``heads * head_dim -> dim``), and either separate Linear ``q``, ``k``, ``v``
(``dim -> heads * head_dim``; ``search_spaces/vit.py`` ``Attention``) or one fused Linear ``qkv``
(``dim -> 3 * heads * head_dim``, rows laid out ``[q | k | v]``, each ``[head 0 | head 1 | ...]``)
with an int ``attn_dim = heads * head_dim`` that its forward reshapes to (timm's ``Attention``).
Removing head ``h`` removes its ``head_dim`` rows of ``q``, ``k``, ``v`` (of each third of
``qkv``; weights and biases) and the matching columns of ``proj``; ``num_heads`` (and
``attn_dim``) shrink. A transformer MLP is any module with Linear ``fc1`` (``dim -> hidden``) and
``fc2`` (``hidden -> dim``); removing a neuron removes its row of ``fc1`` and column of ``fc2``.
A module with a norm or gate over the heads' or neurons' width (timm's ``scale_norm``, ``gated``)
is not one of these: :func:`unsupported_layers` names it, and the technique refuses the model.

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

__all__ = ["CRITERIA", "attention_layers", "mlp_layers", "prune_heads", "unsupported_layers"]


def _is_linear(m: object) -> bool:
    return isinstance(m, nn.Linear)


def _no_module(m: nn.Module, name: str) -> bool:
    """``m.name`` is absent, None or an identity (nothing acts on the heads' / neurons' width)."""
    sub = getattr(m, name, None)
    return sub is None or isinstance(sub, nn.Identity)


def _heads(m: nn.Module) -> tuple[int, int] | None:
    heads, dim = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
    if isinstance(heads, int) and isinstance(dim, int) and _is_linear(getattr(m, "proj", None)):
        return heads, dim
    return None


def _is_fused(m: nn.Module) -> bool:
    """One ``qkv`` Linear (timm): its forward reshapes to ``attn_dim``, which we can shrink."""
    shape, qkv = _heads(m), getattr(m, "qkv", None)
    return (
        shape is not None
        and _is_linear(qkv)
        and getattr(m, "attn_dim", None) == shape[0] * shape[1]
        and qkv.out_features == 3 * shape[0] * shape[1]
        and m.proj.in_features == shape[0] * shape[1]
        and _no_module(m, "norm")
        and _no_module(m, "gate")
    )


def _is_attention(m: nn.Module) -> bool:
    separate = all(_is_linear(getattr(m, n, None)) for n in ("q", "k", "v"))
    return _heads(m) is not None and (separate or _is_fused(m))


def _is_mlp(m: nn.Module) -> bool:
    fc1, fc2 = getattr(m, "fc1", None), getattr(m, "fc2", None)
    return (
        isinstance(fc1, nn.Linear)
        and isinstance(fc2, nn.Linear)
        and fc1.out_features == fc2.in_features
        and _no_module(m, "norm")
    )


def attention_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _is_attention(m)]


def mlp_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _is_mlp(m)]


def unsupported_layers(model: nn.Module) -> list[str]:
    """Attention layers and MLPs whose heads / neurons cannot be removed, described, e.g.
    ``"blocks.0.attn (MultiheadAttention)"``: a module with an int ``num_heads`` that is no
    attention layer above, or with ``fc1``/``fc2`` and a norm between them."""
    out = []
    for n, m in model.named_modules():
        attn = isinstance(getattr(m, "num_heads", None), int) and not _is_attention(m)
        mlp = _is_linear(getattr(m, "fc1", None)) and _is_linear(getattr(m, "fc2", None))
        if attn or (mlp and not _is_mlp(m) and not _is_attention(m)):
            out.append(f"{n or 'the model'} ({type(m).__name__})")
    return out


# (tensor, dim along which the units are laid out, blocks): a tensor's axis holds ``blocks``
# consecutive copies of the units' layout (3 for a fused qkv: q, k and v, each head by head)
_Part = tuple[torch.Tensor, int, int]


def _head_parts(attn: nn.Module) -> Iterator[_Part]:
    """Every parameter a head owns."""
    lins = [(attn.qkv, 3)] if _is_fused(attn) else [(getattr(attn, n), 1) for n in "qkv"]
    for lin, blocks in lins:
        yield lin.weight, 0, blocks
        if lin.bias is not None:
            yield lin.bias, 0, blocks
    yield attn.proj.weight, 1, 1


def _neuron_parts(mlp: nn.Module) -> Iterator[_Part]:
    yield mlp.fc1.weight, 0, 1
    if mlp.fc1.bias is not None:
        yield mlp.fc1.bias, 0, 1
    yield mlp.fc2.weight, 1, 1


def _per_unit(t: torch.Tensor, dim: int, units: int, blocks: int = 1) -> torch.Tensor:
    """Sum of ``t`` per unit (a unit is ``size / (blocks * units)`` consecutive entries along
    ``dim`` in each of the ``blocks`` consecutive blocks)."""
    t = t.detach().float().movedim(dim, 0)
    return t.reshape(blocks, units, -1).sum((0, 2))


def _l1(parts: Iterator[_Part], units: int) -> torch.Tensor:
    return sum(_per_unit(t.abs(), d, units, b) for t, d, b in parts)  # type: ignore[return-value]


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
                    _per_unit(t * t.grad, d, units(m), b)
                    for t, d, b in parts(m)
                    if t.grad is not None
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
        if _is_fused(m):  # the kept heads' rows of each of q, k and v
            width = m.num_heads * m.head_dim
            _slice(m.qkv, torch.cat([rows + i * width for i in range(3)]), 0)
            m.attn_dim = len(rows)
        else:
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
