"""MobileNetV2-style inverted-residual stages for small 2-D images ``input_shape=(C, H, W)``.

Stem conv 3x3 (stride 2 only for inputs of side >= 64), then ``stages`` stages of inverted-residual
blocks, then a 1x1 head conv, global average pooling and a Linear. The first block of every stage
after the first has stride 2 while the map's smaller side is >= 8 (28x28 -> 28, 14, 7; 8x8 -> 8, 4,
4), so striding never leaves a map below 4. Stage widths are ``channels[s] * width_mult`` rounded
to a multiple of 4 (at least 4); the stem has the first stage's width, so the first block of stage
0 is residual.

Params sampled from the trial:
    width_mult   global width multiplier, from ``width_mults``
    se           only when ``se="search"``: squeeze-excite in every block, True or False
    depth_s{i}   blocks in stage i, in [min_depth, max_depth]
    expand_s{i}  expansion ratio of stage i's blocks, from ``expansions``
    kernel_s{i}  depthwise kernel of stage i's blocks, from ``kernels``
    block_s{i}   only when ``blocks`` offers several: "inverted" (inverted residual) or "ghost"
                 (a ghost bottleneck, search_spaces/ghost.py; no squeeze-excite)
    share        only when ``share="search"``: True or False

Keyword args (narrow the space from the experiment YAML):
    stages=3, channels=(16, 24, 32, 64, 96) (the first ``stages`` are used), min_depth=1,
    max_depth=3, expansions=(1, 2, 3, 4, 6), kernels=(3, 5, 7), width_mults=(0.25, 0.5, 0.75, 1.0),
    se="search" (True, False or "search"), head_mult=4.0 (head width = head_mult x last stage
    width), blocks=("inverted",) (add "ghost" to search ghost bottlenecks),
    share=False (True, False or "search"): parameter sharing across depth. The residual blocks
    of a stage (stride 1, same width in and out) are one module called ``depth`` times (one set
    of weights, as in weight-tied / recurrent-depth networks): the same multiply-adds, fewer
    parameters. ``params`` and ``size_bytes`` count shared weights once; the export keeps one
    copy (ONNX initializers, safetensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import torch
from torch import nn

from search_spaces.ghost import GhostBottleneck

_BLOCKS = ("inverted", "ghost")
_BIG_INPUT = 64  # stem stride 2 from this side on
_MIN_SIZE_TO_STRIDE = 8  # a stride-2 block leaves a map of at least 4


def _round_channels(value: float) -> int:
    """Round to the nearest multiple of 4 (halves up), at least 4."""
    return max(4, int(value / 4 + 0.5) * 4)


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv (no bias) + BN, followed by ReLU6 when ``act``."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: avg pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hardsigmoid -> scale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1),
            nn.ReLU(),
            nn.Conv2d(reduced, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> (SE) -> 1x1 linear project, + the input when shapes match."""

    def __init__(
        self, c_in: int, c_out: int, *, stride: int, expand: int, kernel: int, se: bool
    ) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = _conv_bn(c_in, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride=stride, groups=mid)
        self.se = SqueezeExcite(mid, _round_channels(mid / 4)) if se else nn.Identity()
        self.project = _conv_bn(mid, c_out, 1, act=False)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out


class MobileNet(nn.Module):
    """Stem, inverted-residual blocks, 1x1 head conv, then global average pooling and a Linear."""

    def __init__(
        self, stem: nn.Module, blocks: nn.Sequential, head: nn.Module, classifier: nn.Sequential
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))))


def mobilenet(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    stages: int = 3,
    channels: Sequence[int] = (16, 24, 32, 64, 96),
    min_depth: int = 1,
    max_depth: int = 3,
    expansions: Sequence[int] = (1, 2, 3, 4, 6),
    kernels: Sequence[int] = (3, 5, 7),
    width_mults: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    se: bool | str = "search",
    head_mult: float = 4.0,
    blocks: Sequence[str] = ("inverted",),
    share: bool | str = False,
) -> nn.Module:
    """Sample a MobileNetV2-style net mapping ``(B, *input_shape)`` to ``(B, num_classes)``."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"mobilenet: input_shape must be (C, H, W), got input_shape={input_shape}; "
            "use the cnn space for 1-D signals or the mlp space for flat features"
        )
    for s in input_shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(
                f"mobilenet: input_shape must hold positive ints, got input_shape={input_shape}; "
                "fix the dataset's shape"
            )
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("stages", stages)
    _check_positive_int("min_depth", min_depth)
    _check_positive_int("max_depth", max_depth)
    if min_depth > max_depth:
        raise ValueError(
            f"mobilenet: min_depth must be <= max_depth, got min_depth={min_depth}, "
            f"max_depth={max_depth}; lower min_depth or raise max_depth"
        )
    channels = _check_choices("channels", channels, int)
    if stages > len(channels):
        raise ValueError(
            f"mobilenet: stages must be <= len(channels), got stages={stages} with "
            f"{len(channels)} channels; add base widths to channels or lower stages"
        )
    expansions = _check_choices("expansions", expansions, int)
    kernels = _check_choices("kernels", kernels, int)
    for k in kernels:
        if k % 2 == 0:
            raise ValueError(
                f"mobilenet: kernels must all be odd so padding keeps the size, got "
                f"kernels={kernels}; replace {k} with an odd size as in (3, 5, 7)"
            )
    width_mults = _check_choices("width_mults", width_mults, float)
    if se not in (True, False, "search"):
        raise ValueError(
            f"mobilenet: se must be True, False or 'search', got se={se!r}; use one of those"
        )
    if isinstance(head_mult, bool) or not isinstance(head_mult, (int, float)) or head_mult <= 0:
        raise ValueError(
            f"mobilenet: head_mult must be a positive number, got head_mult={head_mult!r}; "
            "pass e.g. 4.0"
        )

    kinds = (blocks,) if isinstance(blocks, str) else tuple(blocks)
    if not kinds or any(b not in _BLOCKS for b in kinds):
        raise ValueError(
            f"mobilenet: blocks must be a non-empty subset of {_BLOCKS}, got blocks={kinds}; "
            "pick from those names"
        )

    if share not in (True, False, "search"):
        raise ValueError(
            f"mobilenet: share must be True, False or 'search', got share={share!r}; use one "
            "of those"
        )

    width_mult = trial.suggest_categorical("width_mult", width_mults)
    use_se = trial.suggest_categorical("se", [True, False]) if se == "search" else se
    tied = trial.suggest_categorical("share", [True, False]) if share == "search" else share
    widths = [_round_channels(c * width_mult) for c in channels[:stages]]

    c_in, side = input_shape[0], min(input_shape[1:])
    stem_stride = 2 if side >= _BIG_INPUT else 1
    stem = _conv_bn(c_in, widths[0], 3, stride=stem_stride)
    side = (side - 1) // stem_stride + 1
    c_in = widths[0]

    blocks: list[nn.Module] = []
    for s, c_out in enumerate(widths):
        depth = trial.suggest_int(f"depth_s{s}", min_depth, max_depth)
        expand = trial.suggest_categorical(f"expand_s{s}", expansions)
        kernel = trial.suggest_categorical(f"kernel_s{s}", kernels)
        kind = kinds[0] if len(kinds) == 1 else trial.suggest_categorical(f"block_s{s}", kinds)
        repeated: nn.Module | None = None  # the stage's residual block, when shared
        for b in range(depth):
            stride = 2 if s > 0 and b == 0 and side >= _MIN_SIZE_TO_STRIDE else 1
            block: nn.Module
            if tied and repeated is not None and stride == 1 and c_in == c_out:
                block = repeated
            elif kind == "ghost":
                block = GhostBottleneck(c_in, c_out, stride=stride, expand=expand, kernel=kernel)
            else:
                block = InvertedResidual(
                    c_in, c_out, stride=stride, expand=expand, kernel=kernel, se=use_se
                )
            if tied and repeated is None and stride == 1 and c_in == c_out:
                repeated = block
            blocks.append(block)
            side = (side - 1) // stride + 1
            c_in = c_out

    head_width = _round_channels(c_in * head_mult)
    head = _conv_bn(c_in, head_width, 1)
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head_width, num_classes)
    )
    return MobileNet(stem, nn.Sequential(*blocks), head, classifier)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"mobilenet: {name} must be a positive int, got {name}={value!r}; pass e.g. 1"
        )


def _check_choices(name: str, values: Sequence[float], kind: type) -> tuple:
    """A non-empty list of positive numbers (ints when ``kind`` is int)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ValueError(
            f"mobilenet: {name} must be a non-empty list, got {name}={values!r}; "
            "give at least one value"
        )
    allowed = (int,) if kind is int else (int, float)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, allowed) or v <= 0:
            raise ValueError(
                f"mobilenet: {name} must hold positive {kind.__name__}s, got "
                f"{name}={tuple(values)}; remove {v!r}"
            )
    return tuple(values)


# what `nas spaces` lists as the values an argument may take (its default is in the signature)
mobilenet.choices = {  # type: ignore[attr-defined]
    "blocks": _BLOCKS,
    "se": (True, False, "search"),
    "share": (True, False, "search"),
}
