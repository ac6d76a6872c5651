"""The elastic layers of the supernets (:mod:`nas.supernet.elastic`): each slices the leading
channels of its full weights for the active sub-network, and copies that slice into a standalone
layer on ``extract``. Kernels shrink through learned transforms (OFA's progressive 7 -> 5 -> 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ElasticBN(nn.BatchNorm2d):
    """BatchNorm over the first ``c`` channels of the input (running statistics sliced too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as nn.BatchNorm2d does
                factor = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            factor,
            self.eps,
        )

    def extract(self, c: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum)
        with torch.no_grad():
            bn.weight.copy_(self.weight[:c])
            bn.bias.copy_(self.bias[:c])
            bn.running_mean.copy_(self.running_mean[:c])
            bn.running_var.copy_(self.running_var[:c])
        return bn


class ElasticPointwise(nn.Module):
    """1x1 conv from the first ``c_in`` to the first ``c_out`` channels, then BN (+ ReLU6)."""

    def __init__(self, c_in: int, c_out: int, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = ElasticBN(c_out)
        self.act = act
        self.active_out = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight[: self.active_out, : x.shape[1]]
        y = self.bn(F.conv2d(x, w))
        return F.relu6(y) if self.act else y

    def extract(self, c_in: int) -> nn.Sequential:
        conv = nn.Conv2d(c_in, self.active_out, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.conv.weight[: self.active_out, :c_in])
        layers: list[nn.Module] = [conv, self.bn.extract(self.active_out)]
        if self.act:
            layers.append(nn.ReLU6())
        return nn.Sequential(*layers)


class ElasticDepthwise(nn.Module):
    """Depthwise conv over the first channels, at an active kernel size cut from the largest."""

    def __init__(self, channels: int, kernels: Sequence[int], stride: int) -> None:
        super().__init__()
        self.kernels = tuple(sorted(kernels))
        big = self.kernels[-1]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, 1, big, big))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # OFA's kernel transformation: one k*k x k*k matrix per smaller size, identity at start
        self.transforms = nn.ParameterDict(
            {str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernels[:-1]}
        )
        self.bn = ElasticBN(channels)
        self.active_kernel = big

    def kernel_weight(self, channels: int) -> torch.Tensor:
        return _cut_kernel(
            self.weight[:channels], self.kernels, self.active_kernel, self.transforms
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.active_kernel
        y = F.conv2d(x, self.kernel_weight(c), stride=self.stride, padding=k // 2, groups=c)
        return F.relu6(self.bn(y))

    def extract(self, c: int) -> nn.Sequential:
        k = self.active_kernel
        conv = nn.Conv2d(c, c, k, self.stride, k // 2, groups=c, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.kernel_weight(c))
        return nn.Sequential(conv, self.bn.extract(c), nn.ReLU6())


def _cut_kernel(
    w: torch.Tensor, kernels: Sequence[int], active: int, transforms: nn.ParameterDict
) -> torch.Tensor:
    """The ``active`` x ``active`` kernel cut from the largest ``w`` (..., K, K): the centre of
    each size through its learned transform, 7 -> 5 -> 3, each from the one above."""
    lead = w.shape[:-2]
    for k in reversed(tuple(kernels)[:-1]):
        if k < active:
            break
        start = (w.shape[-1] - k) // 2
        crop = w[..., start : start + k, start : start + k].reshape(-1, k * k)
        w = (crop @ transforms[str(k)].T).reshape(*lead, k, k)
    return w


class ElasticConv(nn.Module):
    """A full kxk convolution (then BN, ReLU6) from the first ``c_in`` to the first
    ``active_out`` channels, at an active kernel size cut from the largest as the depthwise's."""

    def __init__(self, c_in: int, c_out: int, kernels: Sequence[int], stride: int) -> None:
        super().__init__()
        self.kernels = tuple(sorted(kernels))
        big = self.kernels[-1]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(c_out, c_in, big, big))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.transforms = nn.ParameterDict(
            {str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernels[:-1]}
        )
        self.bn = ElasticBN(c_out)
        self.active_kernel = big
        self.active_out = c_out

    def kernel_weight(self, c_in: int) -> torch.Tensor:
        w = self.weight[: self.active_out, :c_in]
        return _cut_kernel(w, self.kernels, self.active_kernel, self.transforms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active_kernel
        y = F.conv2d(x, self.kernel_weight(x.shape[1]), stride=self.stride, padding=k // 2)
        return F.relu6(self.bn(y))

    def extract(self, c_in: int) -> nn.Sequential:
        k = self.active_kernel
        conv = nn.Conv2d(c_in, self.active_out, k, self.stride, k // 2, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.kernel_weight(c_in))
        return nn.Sequential(conv, self.bn.extract(self.active_out), nn.ReLU6())


class ElasticConvBlock(nn.Module):
    """A plain CNN block: one elastic kxk convolution (width and kernel elastic), a residual
    when the shapes match. No expansion: ``expand`` is always 1."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, expansions: Sequence[int], kernels: Sequence[int]
    ) -> None:
        super().__init__()
        self.stride = stride
        self.conv = ElasticConv(c_in, c_out, kernels, stride)

    def configure(self, width: int, expand: int, kernel: int) -> None:
        self.conv.active_out, self.conv.active_kernel = width, kernel

    @property
    def choice(self) -> tuple[int, int, int]:
        """(width, expand, kernel) now active."""
        return self.conv.active_out, 1, self.conv.active_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.stride == 1 and x.shape[1] == y.shape[1] else y

    def extract(self, c_in: int) -> nn.Module:
        return _Residual(
            self.conv.extract(c_in), residual=self.stride == 1 and c_in == self.conv.active_out
        )


class ElasticBlock(nn.Module):
    """Inverted residual with elastic expansion, kernel, input and output width."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, expansions: Sequence[int], kernels: Sequence[int]
    ) -> None:
        super().__init__()
        mid = c_in * max(expansions)
        self.stride = stride
        self.expand = ElasticPointwise(c_in, mid)
        self.depthwise = ElasticDepthwise(mid, kernels, stride)
        self.project = ElasticPointwise(mid, c_out, act=False)
        self.active_expand = max(expansions)

    def configure(self, width: int, expand: int, kernel: int) -> None:
        self.project.active_out, self.active_expand = width, expand
        self.depthwise.active_kernel = kernel

    @property
    def choice(self) -> tuple[int, int, int]:
        """(width, expand, kernel) now active."""
        return self.project.active_out, self.active_expand, self.depthwise.active_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.expand.active_out = x.shape[1] * self.active_expand
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.stride == 1 and x.shape[1] == y.shape[1] else y

    def extract(self, c_in: int) -> nn.Module:
        mid = c_in * self.active_expand
        self.expand.active_out = mid
        return _Residual(
            nn.Sequential(
                self.expand.extract(c_in), self.depthwise.extract(mid), self.project.extract(mid)
            ),
            residual=self.stride == 1 and c_in == self.project.active_out,
        )


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, residual: bool) -> None:
        super().__init__()
        self.body = body
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y
