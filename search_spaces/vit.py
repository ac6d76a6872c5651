"""A tiny vision transformer for small images ``input_shape=(C, H, W)`` (e.g. 28x28).

Patch embedding (a ``patch x patch`` conv with that stride), a learned position embedding, then
``depth`` pre-norm transformer blocks (multi-head self-attention, MLP), a final LayerNorm, the mean
over tokens and a Linear. Attention keeps separate ``q``, ``k``, ``v`` projections and an output
projection ``proj`` so that whole heads can be removed (``head_pruning`` shrinks them, and the
MLP's hidden neurons, physically).

Params sampled from the trial:
    patch        patch side, from ``patches`` (only sides that divide H and W)
    embed        embedding width, from ``embeds``
    depth        transformer blocks, in [min_depth, max_depth]
    heads        attention heads per block, from ``heads`` (each must divide every embed)
    mlp_ratio    MLP hidden width / embed, from ``mlp_ratios``

Keyword args: patches=(4, 7), embeds=(16, 32, 48, 64), min_depth=1, max_depth=4,
heads=(1, 2, 4), mlp_ratios=(1, 2, 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with ``num_heads`` heads of ``head_dim`` each."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, h, d).transpose(1, 2)  # (b, h, n, d)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d)), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, h * d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dim // num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self, channels: int, tokens: int, dim: int, patch: int, blocks: list[Block], classes: int
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (b, tokens, dim)
        return self.head(self.norm(self.blocks(x)).mean(1))


def vit(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    patches: Sequence[int] = (4, 7),
    embeds: Sequence[int] = (16, 32, 48, 64),
    min_depth: int = 1,
    max_depth: int = 4,
    heads: Sequence[int] = (1, 2, 4),
    mlp_ratios: Sequence[float] = (1, 2, 4),
) -> nn.Module:
    """Sample a tiny ViT mapping ``(B, *input_shape)`` to ``(B, num_classes)``."""
    shape = tuple(input_shape)
    if len(shape) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise ValueError(
            f"vit: input_shape must be (C, H, W) of positive ints, got input_shape={shape}; use "
            "the cnn space for 1-D signals or the mlp space for flat features"
        )
    c, h, w = shape
    for name, values in (("patches", patches), ("embeds", embeds), ("heads", heads)):
        if not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
        ):
            raise ValueError(f"vit: {name} must be positive ints, got {name}={values!r}")
    if not 1 <= min_depth <= max_depth:
        raise ValueError(
            f"vit: need 1 <= min_depth <= max_depth, got min_depth={min_depth}, "
            f"max_depth={max_depth}"
        )
    bad = [(e, k) for e in embeds for k in heads if e % k]
    if bad:
        raise ValueError(
            f"vit: every embed must be divisible by every head count, but {bad[0][0]} is not by "
            f"{bad[0][1]}; use embeds that are multiples of max(heads)"
        )
    fitting = [p for p in patches if h % p == 0 and w % p == 0]
    if not fitting:
        raise ValueError(
            f"vit: no patch side in patches={tuple(patches)} divides the {h}x{w} input; add one "
            "that does (e.g. 4 or 7 for 28x28)"
        )
    patch = trial.suggest_categorical("patch", fitting)
    dim = trial.suggest_categorical("embed", tuple(embeds))
    depth = trial.suggest_int("depth", min_depth, max_depth)
    n_heads = trial.suggest_categorical("heads", tuple(heads))
    ratio = trial.suggest_categorical("mlp_ratio", tuple(mlp_ratios))
    hidden = max(1, round(dim * float(ratio)))
    blocks = [Block(dim, n_heads, hidden) for _ in range(depth)]
    return ViT(c, (h // patch) * (w // patch), dim, patch, blocks, num_classes)
