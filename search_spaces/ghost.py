"""Ghost modules (Han et al. 2020, GhostNet): feature-map reuse as a block choice of the spaces.

A ghost module makes ``c_out`` feature maps from half of them: a primary conv computes
``c_out / 2`` maps, a cheap depthwise 3x3 conv derives the other half from those, and the two are
concatenated. At the same width it costs about half the multiply-adds and weights of a full conv.
``cnn`` offers it with ``blocks: [conv, ghost]`` (a ghost module in place of a conv layer);
``mobilenet`` with ``blocks: [inverted, ghost]`` (a ghost bottleneck in place of an inverted
residual: ghost expand -> depthwise (stride 2 only) -> ghost project, + the input).
"""

from __future__ import annotations

import torch
from torch import nn


class GhostModule(nn.Module):
    """``c_in -> c_out`` (even): primary k x k conv to ``c_out / 2``, cheap depthwise 3x3 to the
    other half, concatenated; BN after each part, ReLU when ``act``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        *,
        act: bool = True,
        bn: bool = True,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(
                f"ghost module: c_out must be even (half primary, half cheap maps), got {c_out}; "
                "use even widths"
            )
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        half = c_out // 2

        def part(layer: nn.Module) -> nn.Sequential:
            tail: list[nn.Module] = [norm(half)] if bn else []
            return nn.Sequential(layer, *tail, *([nn.ReLU()] if act else []))

        self.primary = part(conv(c_in, half, kernel, padding=kernel // 2, bias=not bn))
        self.cheap = part(conv(half, half, 3, padding=1, groups=half, bias=not bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)


class GhostBottleneck(nn.Module):
    """Ghost expand (ReLU) -> depthwise k x k with BN when ``stride`` 2 -> ghost project
    (linear), + the input when the shapes match (as GhostNet's bottleneck)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, expand: int, kernel: int) -> None:
        super().__init__()
        mid = max(2, c_in * expand // 2 * 2)  # even
        self.expand = GhostModule(c_in, mid)
        self.depthwise: nn.Module = nn.Identity()
        if stride > 1:
            self.depthwise = nn.Sequential(
                nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
            )
        self.project = GhostModule(mid, c_out, act=False)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out
