"""An elastic MobileNet supernet (Once-for-All style, Cai et al. 2020): one set of weights, many
sub-networks.

Elastic dimensions, chosen per forward with :meth:`ElasticMobileNet.set_active`:

- ``depth``: blocks used in each stage (the first ``d`` of the stage's ``max_depth``);
- ``expand``: expansion ratio of each block (the first ``c_in * e`` hidden channels);
- ``kernel``: depthwise kernel size of each block: the center of the largest kernel, passed
  through a learned ``k*k x k*k`` transform per smaller size (identity at start), applied
  progressively 7 -> 5 -> 3 as in OFA;
- ``width``: output channels of each stage (the first ``w``), shared by its blocks.

Every convolution and BatchNorm slices the leading channels of its full weights, so a sub-network
is a prefix of the supernet. :meth:`ElasticMobileNet.extract` copies those slices (kernels already
transformed) into a standalone, physically smaller ``nn.Module`` that computes the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Stage:
    """A stage of the supernet: its widest output, most blocks, and the first block's stride."""

    max_width: int
    max_depth: int
    stride: int


DEFAULT_STAGES = (Stage(24, 3, 2), Stage(40, 3, 2), Stage(64, 3, 2))


def _check_choices(name: str, values: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted(set(values)))
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"elastic supernet: {name} must be positive ints, got {tuple(values)}")
    return out


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


class ElasticMobileNet(nn.Module):
    """The supernet: stem, elastic stages of inverted residuals, 1x1 head conv, pooling, Linear.

    ``set_active(config)`` selects a sub-network; ``config`` has one entry per dimension:
    ``depth`` (per stage), ``width`` (per stage), ``expand`` and ``kernel`` (per block of the
    widest depth, a list per stage; blocks beyond the stage's depth are ignored).
    """

    kind = "mobilenet"
    block: type[nn.Module] = ElasticBlock

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        stages: Sequence[Stage] = DEFAULT_STAGES,
        stem: int = 16,
        head: int = 128,
        depths: Sequence[int] = (1, 2, 3),
        expansions: Sequence[int] = (2, 3, 4),
        kernels: Sequence[int] = (3, 5, 7),
        width_mults: Sequence[float] = (0.5, 0.75, 1.0),
    ) -> None:
        super().__init__()
        # what the weights belong to: a checkpoint of another supernet is refused on load
        self.spec = {
            "kind": self.kind,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "stages": [[s.max_width, s.max_depth, s.stride] for s in stages],
            "stem": stem,
            "head": head,
            "depths": sorted(set(depths)),
            "expansions": sorted(set(expansions)),
            "kernels": sorted(set(kernels)),
            "width_mults": sorted(set(width_mults)),
        }
        if len(input_shape) != 3:
            raise ValueError(
                f"elastic {self.kind}: input_shape must be (C, H, W), got {input_shape}"
            )
        self.stages = tuple(stages)
        self.depths = _check_choices("depths", depths)
        self.expansions = _check_choices("expansions", expansions)
        self.kernels = _check_choices("kernels", kernels)
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"elastic {self.kind}: kernels must be odd, got {self.kernels}")
        self.width_mults = tuple(sorted(set(width_mults)))
        self.widths = [
            tuple(sorted({max(1, round(s.max_width * m)) for m in self.width_mults}))
            for s in self.stages
        ]
        for s in self.stages:
            if max(self.depths) > s.max_depth:
                raise ValueError(
                    f"elastic {self.kind}: depths go up to {max(self.depths)}, a stage has "
                    f"max_depth {s.max_depth}; lower depths or raise max_depth"
                )
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()
        )
        blocks, c_in = [], stem
        for s in self.stages:
            stage = nn.ModuleList()
            for b in range(s.max_depth):
                stage.append(
                    self.block(c_in, s.max_width, s.stride if b == 0 else 1, expansions, kernels)
                )
                c_in = s.max_width
            blocks.append(stage)
        self.blocks = nn.ModuleList(blocks)
        self.head = ElasticPointwise(c_in, head)
        self.classifier = nn.Linear(head, num_classes)
        self.set_active(self.largest())

    # --- configurations ------------------------------------------------------------------------

    def largest(self) -> dict[str, Any]:
        return self._uniform(max(self.depths), -1, max(self.expansions), max(self.kernels))

    def smallest(self) -> dict[str, Any]:
        return self._uniform(min(self.depths), 0, min(self.expansions), min(self.kernels))

    def _uniform(self, depth: int, width_index: int, expand: int, kernel: int) -> dict[str, Any]:
        return {
            "depth": [depth] * len(self.stages),
            "width": [w[width_index] for w in self.widths],
            "expand": [[expand] * s.max_depth for s in self.stages],
            "kernel": [[kernel] * s.max_depth for s in self.stages],
        }

    def sample(self, gen: torch.Generator | None = None) -> dict[str, Any]:
        """A random sub-network (uniform over each dimension's choices)."""

        def pick(choices: Sequence[Any]) -> Any:
            return choices[int(torch.randint(len(choices), (1,), generator=gen))]

        return {
            "depth": [pick(self.depths) for _ in self.stages],
            "width": [pick(w) for w in self.widths],
            "expand": [[pick(self.expansions) for _ in range(s.max_depth)] for s in self.stages],
            "kernel": [[pick(self.kernels) for _ in range(s.max_depth)] for s in self.stages],
        }

    def check(self, config: Mapping[str, Any]) -> None:
        """ValueError naming the first dimension of ``config`` outside the supernet's ranges."""
        n = len(self.stages)
        for key in ("depth", "width", "expand", "kernel"):
            if key not in config or len(config[key]) != n:
                raise ValueError(f"sub-network: {key} needs one entry per stage ({n})")
        for i in range(n):
            allowed: dict[str, tuple[int, ...]] = {
                "depth": self.depths,
                "width": self.widths[i],
            }
            for key, choices in allowed.items():
                if config[key][i] not in choices:
                    raise ValueError(
                        f"sub-network: {key}[{i}]={config[key][i]} is outside the supernet; "
                        f"allowed: {list(choices)}"
                    )
            for key, choices in (("expand", self.expansions), ("kernel", self.kernels)):
                for b, v in enumerate(list(config[key][i])[: config["depth"][i]]):
                    if v not in choices:
                        raise ValueError(
                            f"sub-network: {key}[{i}][{b}]={v} is outside the supernet; "
                            f"allowed: {list(choices)}"
                        )

    def set_active(self, config: Mapping[str, Any]) -> None:
        self.check(config)
        self.active = {k: [list(v) if isinstance(v, list | tuple) else v for v in config[k]]
                       for k in ("depth", "width", "expand", "kernel")}  # fmt: skip
        for i, stage in enumerate(self.blocks):
            for b, block in enumerate(stage):
                if b < config["depth"][i]:
                    block.configure(
                        config["width"][i], config["expand"][i][b], config["kernel"][i][b]
                    )

    # --- forward and extraction ------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, stage in enumerate(self.blocks):
            for block in stage[: self.active["depth"][i]]:
                x = block(x)
        x = self.head(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def extract(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        """The active (or ``config``) sub-network as a standalone module with copied weights."""
        layers = [module for _, module, _ in self.pieces(config)]
        return nn.Sequential(*layers).train(self.training)

    def pieces(self, config: Mapping[str, Any] | None = None) -> list[tuple[str, nn.Module, tuple]]:
        """The active (or ``config``) sub-network as standalone pieces, in order: ``(key,
        module, input shape)`` for the stem, each block, and the head with the classifier. The
        key names what the piece's cost depends on (widths, expansion, kernel, stride, input
        size): the per-layer latency table's key."""
        import copy

        if config is not None:
            self.set_active(config)
        shape = tuple(self.spec["input_shape"])
        out: list[tuple[str, nn.Module, tuple]] = [
            (f"stem:{shape}", copy.deepcopy(self.stem), shape)
        ]
        c = self.stem[0].out_channels
        shape = (c, *shape[1:])
        for i, stage in enumerate(self.blocks):
            for b, block in enumerate(stage[: self.active["depth"][i]]):
                out.append(self._block_piece(i, b, c, shape))
                c, shape = block.choice[0], _strided(shape, block)
        out.append(self._head_piece(c, shape))
        return out

    def _block_piece(self, i: int, b: int, c: int, shape: tuple) -> tuple[str, nn.Module, tuple]:
        block = self.blocks[i][b]
        (w, e, k), s = block.choice, block.stride
        key = f"block:{i}.{b}:c{c}>w{w}:e{e}:k{k}:s{s}:{shape[1]}x{shape[2]}"
        return key, block.extract(c), shape

    def _head_piece(self, c: int, shape: tuple) -> tuple[str, nn.Module, tuple]:
        classifier = nn.Linear(self.classifier.in_features, self.classifier.out_features)
        classifier.load_state_dict(self.classifier.state_dict())
        head = nn.Sequential(
            self.head.extract(c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier
        )
        return f"head:c{c}:{shape[1]}x{shape[2]}", head, shape

    def piece_keys(self) -> list[str]:
        """The key of every distinct piece any sub-network can be made of (see :meth:`pieces`)."""
        return [key for key, _ in self._variants()]

    def piece(self, key: str) -> tuple[nn.Module, tuple]:
        """The standalone piece of ``key`` (one of :meth:`piece_keys`) and its input shape."""
        build = dict(self._variants())[key]
        _, module, shape = build()
        self.set_active(self.active)  # building set a block's choices: restore the active ones
        return module, shape

    def _variants(self) -> list[tuple[str, Any]]:
        """Every distinct piece as ``(key, build)``; ``build()`` cuts it from the weights."""
        import copy

        shape = tuple(self.spec["input_shape"])
        stem = (f"stem:{shape}", copy.deepcopy(self.stem), shape)
        out: list[tuple[str, Any]] = [(stem[0], lambda: stem)]
        c0 = self.stem[0].out_channels
        inputs = {(c0, (c0, *shape[1:]))}  # (width, shape) a block may receive
        for i, stage in enumerate(self.blocks):
            reachable: set[tuple[int, tuple]] = set()
            for b, block in enumerate(stage[: max(self.depths)]):
                outs = set()
                for c, in_shape in sorted(inputs):
                    for w in self.widths[i] if b == 0 else (c,):  # a stage has one width
                        for e in self.expansions:
                            for k in self.kernels:

                                def build(i=i, b=b, c=c, s=in_shape, w=w, e=e, k=k):
                                    self.blocks[i][b].configure(w, e, k)
                                    return self._block_piece(i, b, c, s)

                                s = block.stride
                                key = f"block:{i}.{b}:c{c}>w{w}:e{e}:k{k}:s{s}:"
                                out.append((f"{key}{in_shape[1]}x{in_shape[2]}", build))
                        outs.add((w, (w, *_strided(in_shape, block)[1:])))
                inputs = outs
                if b + 1 in self.depths:  # the stage may end here: the next stage sees this
                    reachable |= outs
            inputs = reachable
        for c, in_shape in sorted(inputs):
            out.append(
                (
                    f"head:c{c}:{in_shape[1]}x{in_shape[2]}",
                    lambda c=c, s=in_shape: self._head_piece(c, s),
                )
            )
        return out


def _strided(shape: tuple, block: nn.Module) -> tuple:
    return (block.choice[0], *[-(-side // block.stride) for side in shape[1:]])


class ElasticCNN(ElasticMobileNet):
    """The elastic CNN: stem, stages of plain kxk convolutions (BN, ReLU6; the first of a stage
    strided, a residual where shapes match) with elastic depth, width and kernel, then the 1x1
    head conv, pooling and Linear. ``expand`` is fixed at 1."""

    kind = "cnn"
    block = ElasticConvBlock

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        stages: Sequence[Stage] = (Stage(16, 2, 2), Stage(32, 2, 2), Stage(64, 2, 2)),
        stem: int = 16,
        head: int = 128,
        depths: Sequence[int] = (1, 2),
        expansions: Sequence[int] = (1,),
        kernels: Sequence[int] = (3, 5),
        width_mults: Sequence[float] = (0.5, 0.75, 1.0),
    ) -> None:
        if tuple(expansions) != (1,):
            raise ValueError(
                f"elastic cnn: a plain convolution has no expansion ratio, got expansions="
                f"{tuple(expansions)}; leave expansions out"
            )
        super().__init__(
            input_shape,
            num_classes,
            stages=stages,
            stem=stem,
            head=head,
            depths=depths,
            expansions=expansions,
            kernels=kernels,
            width_mults=width_mults,
        )
