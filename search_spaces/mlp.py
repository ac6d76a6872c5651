"""The LeNet-300-100 family: flatten, ``depth`` hidden Linear + ReLU (+ Dropout) layers, Linear.

Accepts any ``input_shape``; the input is flattened to ``prod(input_shape)`` features.

Params sampled from the trial:
    depth      number of hidden layers, in [min_depth, max_depth]
    width_{i}  units of hidden layer i, from ``widths``
    dropout    only when ``dropout`` is a list: the dropout probability, from that list

Keyword args (narrow the space from the experiment YAML):
    min_depth=1, max_depth=3, widths=(32, 64, 100, 128, 256, 300),
    dropout=0.0 (a fixed probability in [0, 1), or a list of them to search; 0 adds no Dropout)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from torch import nn


def mlp(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    min_depth: int = 1,
    max_depth: int = 3,
    widths: Sequence[int] = (32, 64, 100, 128, 256, 300),
    dropout: float | Sequence[float] = 0.0,
) -> nn.Module:
    """Sample a multi-layer perceptron mapping ``(B, *input_shape)`` to ``(B, num_classes)``."""
    input_shape = tuple(input_shape)
    if not input_shape or any(not _is_positive_int(s) for s in input_shape):
        raise ValueError(
            f"mlp: input_shape must be a non-empty tuple of positive ints, got "
            f"input_shape={input_shape}; fix the dataset's shape"
        )
    positives = {"num_classes": num_classes, "min_depth": min_depth, "max_depth": max_depth}
    for name, value in positives.items():
        if not _is_positive_int(value):
            raise ValueError(
                f"mlp: {name} must be a positive int, got {name}={value!r}; pass e.g. 1"
            )
    if min_depth > max_depth:
        raise ValueError(
            f"mlp: min_depth must be <= max_depth, got min_depth={min_depth}, "
            f"max_depth={max_depth}; lower min_depth or raise max_depth"
        )
    if isinstance(widths, str) or not isinstance(widths, Sequence) or not widths:
        raise ValueError(
            f"mlp: widths must be a non-empty list of ints, got widths={widths!r}; "
            "write e.g. [100, 300]"
        )
    for w in widths:
        if not _is_positive_int(w):
            raise ValueError(
                f"mlp: widths must hold positive ints, got widths={tuple(widths)}; remove {w!r}"
            )
    search_dropout = isinstance(dropout, Sequence) and not isinstance(dropout, str)
    dropouts = tuple(dropout) if search_dropout else (dropout,)
    if not dropouts or not all(_is_probability(p) for p in dropouts):
        raise ValueError(
            f"mlp: dropout must be a probability in [0, 1) or a non-empty list of them, got "
            f"dropout={dropout!r}; pass e.g. 0.0 or [0.0, 0.2]"
        )

    p_drop = trial.suggest_categorical("dropout", dropouts) if search_dropout else dropouts[0]

    features = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    depth = trial.suggest_int("depth", min_depth, max_depth)
    for i in range(depth):
        width = trial.suggest_categorical(f"width_{i}", tuple(widths))
        layers += [nn.Linear(features, width), nn.ReLU()]
        if p_drop > 0:
            layers.append(nn.Dropout(p_drop))
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_probability(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
