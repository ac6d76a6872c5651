"""A plain convolutional stack: conv -> (BN) -> ReLU -> (pool), then a head: global pooling and
a Linear (``gap``, the default), or the flattened map into an optional hidden Linear + ReLU and a
Linear (``flatten``: LeNet-style; with depth 0 this is an MLP on the raw input).

Works on 2-D images ``input_shape=(C, H, W)`` (Conv2d) and 1-D signals ``input_shape=(C, L)``
(Conv1d). Convolutions keep the spatial size (``padding=k // 2``); only 2x pooling shrinks it, and
pooling is offered only while every spatial side is >= 4, so no map goes below 2.

Params sampled from the trial:
    depth        number of conv layers, in [min_depth, max_depth]
    width_{i}    out channels of layer i, from ``widths``
    kernel_{i}   kernel size of layer i, from ``kernels``
    pool_{i}     pooling after layer i, from ``pools``; only suggested where the map is >= 4
    batch_norm   only when ``batch_norm="search"``: True or False
    block_{i}    only when ``blocks`` offers several: "conv" or "ghost" (a ghost module: half the
                 maps from the conv, half from a cheap depthwise conv on them; even widths)
    head         only when ``heads`` offers several and depth > 0: "gap" or "flatten"
    hidden       only for a flatten head and when ``hidden`` offers several: units of the hidden
                 Linear before the output (0: none)

Keyword args (narrow the space from the experiment YAML):
    min_depth=1, max_depth=4, widths=(8, 16, 24, 32, 48, 64), kernels=(3, 5),
    batch_norm=True (True, False or "search"), pools=("max", "avg", "none"),
    blocks=("conv",) (add "ghost" to search ghost modules; search_spaces/ghost.py),
    heads=("gap",) (add "flatten" to search LeNet-style heads), hidden=(0,) (flatten head only),
    min_depth may be 0 when heads holds "flatten" (depth 0 has no conv layer: an MLP)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import torch
from torch import nn

from search_spaces.ghost import GhostModule

_POOLS = ("max", "avg", "none")
_BLOCKS = ("conv", "ghost")
_HEADS = ("gap", "flatten")
_MIN_SIZE_TO_POOL = 4  # a 2x pool leaves a map of at least 2


class ConvNet(nn.Module):
    """Feature extractor (conv layers) followed by global average pooling and a Linear head."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cnn(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    min_depth: int = 1,
    max_depth: int = 4,
    widths: Sequence[int] = (8, 16, 24, 32, 48, 64),
    kernels: Sequence[int] = (3, 5),
    batch_norm: bool | str = True,
    pools: Sequence[str] = _POOLS,
    blocks: Sequence[str] = ("conv",),
    heads: Sequence[str] = ("gap",),
    hidden: Sequence[int] = (0,),
) -> nn.Module:
    """Sample a small conv net for ``(B, *input_shape)`` inputs with ``num_classes`` logits."""
    input_shape = _check_input_shape(input_shape)
    _check_positive_int("num_classes", num_classes)
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    if not heads or any(h not in _HEADS for h in heads):
        raise ValueError(
            f"cnn: heads must be a non-empty subset of {_HEADS}, got heads={heads}; "
            "pick from those names"
        )
    if type(min_depth) is int and min_depth == 0:
        if "flatten" not in heads:
            raise ValueError(
                f"cnn: min_depth=0 (no conv layer) needs 'flatten' in heads, got heads={heads} "
                "(global pooling of the raw input keeps one number per channel); add 'flatten' "
                "or set min_depth to 1"
            )
    else:
        _check_positive_int("min_depth", min_depth)
    _check_positive_int("max_depth", max_depth)
    if min_depth > max_depth:
        raise ValueError(
            f"cnn: min_depth must be <= max_depth, got min_depth={min_depth}, "
            f"max_depth={max_depth}; lower min_depth or raise max_depth"
        )
    widths = _check_int_choices("widths", widths)
    kernels = _check_int_choices("kernels", kernels)
    for k in kernels:
        if k % 2 == 0:
            raise ValueError(
                f"cnn: kernels must all be odd so padding keeps the size, got "
                f"kernels={kernels}; replace {k} with an odd size as in (3, 5)"
            )
    pools = _check_pools(pools)
    hidden = _check_int_choices("hidden", hidden, allow_zero=True)
    blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
    if not blocks or any(b not in _BLOCKS for b in blocks):
        raise ValueError(
            f"cnn: blocks must be a non-empty subset of {_BLOCKS}, got blocks={blocks}; "
            "pick from those names"
        )
    if "ghost" in blocks and any(w % 2 for w in widths):
        raise ValueError(
            f"cnn: ghost blocks need even widths (half primary, half cheap maps), got "
            f"widths={widths}; use even widths or drop 'ghost' from blocks"
        )
    if batch_norm not in (True, False, "search"):
        raise ValueError(
            f"cnn: batch_norm must be True, False or 'search', got batch_norm={batch_norm!r}; "
            "use one of those"
        )

    use_bn = batch_norm
    if batch_norm == "search":
        use_bn = trial.suggest_categorical("batch_norm", [True, False])

    two_d = len(input_shape) == 3
    conv_cls = nn.Conv2d if two_d else nn.Conv1d
    bn_cls = nn.BatchNorm2d if two_d else nn.BatchNorm1d
    pool_cls = {
        "max": nn.MaxPool2d if two_d else nn.MaxPool1d,
        "avg": nn.AvgPool2d if two_d else nn.AvgPool1d,
    }

    channels = input_shape[0]
    sizes = list(input_shape[1:])
    layers: list[nn.Module] = []
    depth = trial.suggest_int("depth", min_depth, max_depth)
    for i in range(depth):
        width = trial.suggest_categorical(f"width_{i}", widths)
        kernel = trial.suggest_categorical(f"kernel_{i}", kernels)
        block = blocks[0] if len(blocks) == 1 else trial.suggest_categorical(f"block_{i}", blocks)
        if block == "ghost":
            layers.append(
                GhostModule(channels, width, kernel, bn=bool(use_bn), dims=len(input_shape) - 1)
            )
        else:
            layers.append(conv_cls(channels, width, kernel, padding=kernel // 2, bias=not use_bn))
            if use_bn:
                layers.append(bn_cls(width))
            layers.append(nn.ReLU())
        if min(sizes) >= _MIN_SIZE_TO_POOL:
            pool = trial.suggest_categorical(f"pool_{i}", pools)
            if pool != "none":
                layers.append(pool_cls[pool](2))
                sizes = [s // 2 for s in sizes]
        channels = width

    if depth == 0:  # no conv layer: an MLP on the raw input
        head = "flatten"
    else:
        head = heads[0] if len(heads) == 1 else trial.suggest_categorical("head", heads)
    if head == "gap":
        global_pool = nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1)
        classifier = nn.Sequential(global_pool, nn.Flatten(), nn.Linear(channels, num_classes))
        return ConvNet(nn.Sequential(*layers), classifier)
    features = channels * math.prod(sizes)
    units = hidden[0] if len(hidden) == 1 else trial.suggest_categorical("hidden", hidden)
    head_layers: list[nn.Module] = [nn.Flatten()]
    if units:
        head_layers += [nn.Linear(features, units), nn.ReLU()]
        features = units
    head_layers.append(nn.Linear(features, num_classes))
    return ConvNet(nn.Sequential(*layers), nn.Sequential(*head_layers))


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"cnn: input_shape must be (C, L) or (C, H, W), got input_shape={shape}; "
            "reshape the data or use the mlp space"
        )
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(
                f"cnn: input_shape must hold positive ints, got input_shape={shape}; "
                "fix the dataset's shape"
            )
    return shape


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"cnn: {name} must be a positive int, got {name}={value!r}; pass e.g. 1")


def _check_int_choices(
    name: str, values: Sequence[int], *, allow_zero: bool = False
) -> tuple[int, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(
            f"cnn: {name} must be a list of ints, got {name}={values!r}; write e.g. [8, 16]"
        )
    choices = tuple(values)
    if not choices:
        raise ValueError(f"cnn: {name} must not be empty, got {name}=(); give at least one value")
    for v in choices:
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
            raise ValueError(
                f"cnn: {name} must hold {'non-negative' if allow_zero else 'positive'} ints, "
                f"got {name}={choices}; remove {v!r}"
            )
    return choices


def _check_pools(values: Sequence[str]) -> tuple[str, ...]:
    choices = (values,) if isinstance(values, str) else tuple(values)
    if not choices or any(p not in _POOLS for p in choices):
        raise ValueError(
            f"cnn: pools must be a non-empty subset of {_POOLS}, got pools={choices}; "
            "pick from those names"
        )
    return choices


# what `nas spaces` lists as the values an argument may take (its default is in the signature)
cnn.choices = {  # type: ignore[attr-defined]
    "pools": _POOLS,
    "blocks": _BLOCKS,
    "heads": _HEADS,
    "batch_norm": (True, False, "search"),
}
