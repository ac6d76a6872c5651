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

from nas.supernet.elastic_layers import ElasticBlock, ElasticConvBlock, ElasticPointwise


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
