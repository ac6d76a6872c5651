"""Network slimming (Liu et al. 2017): BN-gamma L1 in training, then low-|gamma| channels removed.

Which channels can go is read from the model's ``torch.fx`` graph, not from class names. Every
tensor that carries channels in dim 1 belongs to a *channel group*; tensors whose channel ``i``
must be the same channel share a group:

- a conv (``groups=1``) or a Linear consumes its input's group and starts a new group;
- BatchNorm, element-wise activations, dropout, stochastic depth and pooling keep their input's
  group;
- a depthwise conv (``groups == in_channels == out_channels``) keeps it too: its filters, its
  ``groups`` and the BN after it are tied to the channels that feed it (a MobileNet expand conv);
- tensors combined element-wise (``x + block(x)``, ``x * gate``, sub, div) are unioned into one
  group, so a residual stage (stem, every block's project conv, ``expand=1`` depthwise convs) is
  pruned together, and a squeeze-excite gate is tied to the feature map it scales (SE's reduce conv
  consumes the group, its expand conv produces it);
- global pooling then flatten (``AdaptiveAvgPool(1)`` + ``Flatten``/``torch.flatten(x, 1)``, or
  ``x.mean((2, 3))``) keeps channels 1:1, so a Linear after it consumes the group;
- a concat along the channels (``torch.cat(..., dim=1)``, e.g. a ghost module) keeps each input's
  group at its offset: a conv, Linear, BN or depthwise conv reading it is a member of every part's
  group at that part's offset, and removing channel ``i`` of a part removes position
  ``offset + i`` of that layer's axis (a part of unknown size, such as the model's input, pins
  all parts);
- a grouped conv (``1 < groups``, not depthwise) consumes its input's group and starts a new one,
  like a plain conv, but input block ``b`` feeds only output block ``b``: a group it reads or makes
  keeps the same number of channels in every block (its best ones per block), and the conv's
  weight keeps, per output block, the columns of that block's kept inputs.

Anything else (the model's input and outputs, other concats, reshape/view, flatten of a map
larger than 1x1, transposed convs, norms other than BN, Linear on
rank > 2 tensors, broadcasts that mix ranks, ...) *pins* the groups it touches: their channels are
kept.
A group whose members disagree on the channel count (a broadcast of a 1-channel map) is pinned too.

A group is slimmable when it is not pinned, holds an affine BatchNorm, and every conv/Linear that
reads it reads channels that have passed a BN. A channel's score is how strongly its readers see
it: along one path BNs act in series and any of them can silence the channel, so the path scores
the **min** |gamma| of its BNs (an expand BN then the depthwise BN); paths added together (a
residual stage) each carry the channel, so the channel scores the **max** over the paths its
readers see; a product is silenced by either factor, like a series (an SE gate has no BN, so it
leaves the map's score as it is). For a plain conv -> BN -> conv this is just |gamma|.

``slim`` ranks the channels of all slimmable groups together (one entry per group channel) and
removes the ``floor(ratio * n)`` lowest -- the paper's global ``ratio``-quantile threshold --
keeping at least ``min_channels`` per group (its highest-scoring ones). Equal scores (e.g. an
untrained model, every gamma 1) are broken so that each group loses about the same fraction. The
beta of a removed channel is dropped, not folded into the next layer, so removal is exact where
the channel's output is exactly 0 (gamma = beta = 0, or a depthwise BN that maps 0 to 0 after it).
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "bn_l1_penalty",
    "cut",
    "prunable_groups",
    "select_channels",
    "slim",
    "slimmable_bns",
    "slimming_groups",
    "unsupported_ops",
]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADAPTIVE_POOL = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
# Parameter-free modules that act on each channel independently (the channel dim is kept).
_CHANNELWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
# ops the analysis deliberately keeps the channels of (not unknown: it knows they cannot shrink)
_KEPT_MODULES = (nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Identity)
_KEPT_FUNCS = {
    torch.cat,
    torch.concat,
    torch.stack,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.split,
    torch.chunk,
    torch.squeeze,
    torch.unsqueeze,
}
_KEPT_METHODS = {
    "view",
    "reshape",
    "permute",
    "transpose",
    "split",
    "chunk",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "repeat",
    "size",
    "dim",
}
_CATS = {torch.cat, torch.concat}
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_UNARY_FUNCS = {
    torch.relu,
    F.relu,
    F.relu6,
    torch.sigmoid,
    F.sigmoid,
    F.hardsigmoid,
    F.hardswish,
    F.hardtanh,
    F.silu,
    F.gelu,
    F.mish,
    F.leaky_relu,
    F.elu,
    torch.tanh,
    F.tanh,
    torch.clamp,
    torch.clip,
    F.dropout,
}
# functions by (module prefix, name) that scale each sample by one number, channels kept (imported
# by name: torchvision's stochastic depth in EfficientNet / ConvNeXt blocks, traced as a call)
_PER_SAMPLE_FUNCS = {("torchvision.ops", "stochastic_depth")}
_POOL_FUNCS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "clip", "contiguous"}
_ADAPTIVE_FUNCS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_BINARY_FUNCS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_SUMS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_SUMS |= {"add", "add_", "sub", "sub_"}
_SHAPE_METHODS = {"size", "dim"}  # reading a shape at run time does not fix the channel count

# Member kinds: how a module's tensors are sliced when its group loses channels.
_CONV_OUT, _CONV_IN, _DEPTHWISE, _BATCHNORM = "conv_out", "conv_in", "depthwise", "bn"
_GCONV_IN = "gconv_in"  # the input axis of a grouped (not depthwise) conv
_LINEAR_OUT, _LINEAR_IN = "linear_out", "linear_in"


_Paths = frozenset[frozenset[str]]
_UNSCALED: _Paths = frozenset({frozenset()})  # straight from a conv: no BN has scaled it yet


def _minimal(paths: Iterable[frozenset[str]]) -> _Paths:
    """Drop paths that contain another path: their min can only be lower, so they never win."""
    paths = set(paths)
    return frozenset(p for p in paths if not any(q < p for q in paths))


@dataclass(frozen=True)
class _Member:
    name: str  # qualified module name
    kind: str
    # where the group's channels start on the module's axis when the axis holds several groups
    # (a layer reading a concat); None: the axis is the group's alone
    offset: int | None = None


@dataclass
class _Group:
    """A set of channels that must be kept or removed together, index by index."""

    members: list[_Member]
    size: int
    bns: list[str]  # affine BatchNorms in the group, in graph order (sliced, penalised)
    paths: _Paths  # how consumers read the channels: see _Info.paths
    bn_offsets: dict[str, int] = field(default_factory=dict)  # BNs after a concat: their slice
    blocks: int = 1  # grouped convs read or make it: channels kept evenly per block

    @property
    def producers(self) -> list[str]:
        """The convs / Linears whose output channels (filters, neurons) this group is."""
        return [m.name for m in self.members if m.kind in (_CONV_OUT, _LINEAR_OUT)]

    def scores(self, model: nn.Module) -> torch.Tensor:
        """Per channel: max over read paths of the min |gamma| along the path."""
        gammas = {}
        for n in self.bns:
            g = model.get_submodule(n).weight.detach().abs().float()
            off = self.bn_offsets.get(n)
            gammas[n] = g if off is None else g[off : off + self.size]
        per_path = [torch.stack([gammas[n] for n in path]).amin(0) for path in self.paths]
        return torch.stack(per_path).amax(0)


@dataclass
class _Info:
    """What the analysis knows of one traced tensor."""

    group: int
    rank: int | None = None  # number of dims (batch included), None when unknown
    pooled: bool = False  # every dim after the channel dim has size 1
    # A channel's importance in this tensor, as "max over paths of min over the BNs on the path":
    # a BN in series can silence a channel (min), branches added together each carry it (max).
    paths: _Paths = _UNSCALED
    # a concat along the channels: (group, paths) of each part in order; ``group`` is then a
    # placeholder and consumers attach to the parts at their offsets
    parts: tuple[tuple[int, _Paths], ...] | None = None


@dataclass
class _Analysis:
    """Union-find over channel groups, filled while walking the traced graph."""

    parent: list[int] = field(default_factory=list)
    pinned: list[bool] = field(default_factory=list)
    members: list[list[_Member]] = field(default_factory=list)
    reads: list[set[frozenset[str]]] = field(default_factory=list)  # paths convs/Linears read
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # ops not recognised (their channels kept)
    # layers reading a concat: (name, kind, part groups in order); offsets resolved in _groups
    composite: list[tuple[str, str, list[int]]] = field(default_factory=list)

    def new(self, *, pinned: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.pinned.append(pinned)
        self.members.append([])
        self.reads.append(set())
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        a, b = min(a, b), max(a, b)  # the older group survives: keeps graph order
        self.parent[b] = a
        self.pinned[a] = self.pinned[a] or self.pinned[b]
        self.members[a].extend(self.members[b])
        self.members[b] = []
        self.reads[a] |= self.reads[b]
        self.reads[b] = set()
        return a

    def read(self, g: int, paths: _Paths) -> None:
        self.reads[self.find(g)] |= paths

    def pin(self, g: int) -> None:
        self.pinned[self.find(g)] = True

    def attach(self, g: int, name: str, kind: str) -> None:
        """Record that module ``name`` has a channel axis in group ``g`` (shared modules unify)."""
        axis = "in" if kind in (_CONV_IN, _LINEAR_IN, _GCONV_IN) else "out"
        key = (name, axis)
        if key in self.seen:
            self.union(self.seen[key], g)
        else:
            self.seen[key] = g
            self.members[self.find(g)].append(_Member(name, kind))


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise ValueError(
            f"network slimming: {type(model).__name__} cannot be traced by torch.fx "
            f"({type(exc).__name__}: {exc}); slimming reads channel dependencies from the traced "
            "graph, so make forward() free of data-dependent control flow"
        ) from exc


def _arg(node: torch.fx.Node, index: int, name: str, default: object) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _all_ones(size: object) -> bool:
    if isinstance(size, int):
        return size == 1
    return isinstance(size, (tuple, list)) and all(s == 1 for s in size)


class _Walker:
    """Walks the traced graph once, assigning each tensor a channel group.

    An op returning a tuple (e.g. ``return_indices=True``) needs no care: reading it takes
    ``operator.getitem``, an op we cannot follow, which pins the group.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.uf = _Analysis()
        self.info: dict[torch.fx.Node, _Info] = {}

    def run(self, graph: torch.fx.Graph) -> _Analysis:
        for node in graph.nodes:
            first = node.args[0] if node.args else None
            if not isinstance(first, torch.fx.Node) or first not in self.info:
                first = None
            if node.op in ("placeholder", "get_attr"):
                self.info[node] = _Info(self.uf.new(pinned=True))
            elif node.op == "output":
                for n in self.inputs(node):
                    self.uf.pin(self.info[n].group)
            elif self.is_binary(node):
                self.binary(node)
            elif node.op == "call_function" and node.target in _CATS:
                self.concat(node)
            elif first is None:
                self.opaque(node)
            elif node.op == "call_module":
                self.module(node, first)
            elif node.op == "call_function":
                self.function(node, first)
            elif node.op == "call_method":
                self.method(node, first)
            else:
                self.opaque(node)
        return self.uf

    @staticmethod
    def is_binary(node: torch.fx.Node) -> bool:
        if node.op == "call_function":
            return node.target in _BINARY_FUNCS
        return node.op == "call_method" and node.target in _BINARY_METHODS

    def pin(self, info: _Info) -> None:
        self.uf.pin(info.group)
        for g, _ in info.parts or ():
            self.uf.pin(g)

    def inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return [n for n in node.all_input_nodes if n in self.info]

    def opaque(self, node: torch.fx.Node, *, unknown: bool = False) -> None:
        """An op we cannot follow: keep every channel it touches (``unknown``: an op the
        analysis does not recognise at all, recorded in ``uf.unknown``)."""
        if unknown:
            self.uf.unknown.append(_describe(node, self.modules))
        for n in self.inputs(node):
            self.pin(self.info[n])
        self.info[node] = _Info(self.uf.new(pinned=True))

    def same(
        self,
        node: torch.fx.Node,
        src: torch.fx.Node,
        *,
        rank: int | None = None,
        pooled: bool | None = None,
    ) -> None:
        """``node`` keeps the channels of ``src``; its other tensor inputs are pinned."""
        for n in self.inputs(node):
            if n is not src:
                self.pin(self.info[n])
        base = self.info[src]
        self.info[node] = _Info(
            base.group,
            base.rank if rank is None else rank,
            base.pooled if pooled is None else pooled,
            base.paths,
            base.parts,
        )

    def new_group(self, node: torch.fx.Node, name: str, kind: str, rank: int | None) -> None:
        g = self.uf.new()
        self.uf.attach(g, name, kind)
        self.info[node] = _Info(g, rank)

    def binary(self, node: torch.fx.Node) -> None:
        """Element-wise ``a op b``: tensors combined channel by channel share one group."""
        tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        ranks = {self.info[t].rank for t in tensors if t in self.info}
        if (
            not tensors
            or any(t not in self.info for t in tensors)
            or len(ranks) != 1
            or any(self.info[t].parts is not None for t in tensors)
        ):
            self.opaque(node)
            return
        rank = ranks.pop()
        if rank is None:
            self.opaque(node)
            return
        group = self.info[tensors[0]].group
        for t in tensors[1:]:
            group = self.uf.union(group, self.info[t].group)
        for n in self.inputs(node):
            if n not in tensors:
                self.uf.pin(self.info[n].group)
        paths = [self.info[t].paths for t in tensors]
        if len(paths) == 1:
            merged = paths[0]
        elif node.target in _SUMS:
            merged = _minimal(paths[0] | paths[1])  # a sum carries what either operand carries
        else:  # a product (e.g. an SE gate) or quotient is silenced by either operand
            merged = _minimal(p | q for p in paths[0] for q in paths[1])
        pooled = all(self.info[t].pooled for t in tensors)
        self.info[node] = _Info(group, rank, pooled, merged)

    def module(self, node: torch.fx.Node, first: torch.fx.Node) -> None:
        m = self.modules[str(node.target)]
        name, src = str(node.target), self.info[first]
        if src.parts is not None and isinstance(m, (*_CONV, nn.Linear, *_BN)):
            self.composite_module(node, first, m, name, src)
        elif isinstance(m, _CONV) and src.rank in (None, 2 + len(m.kernel_size)):
            # an input of unknown rank (the model's own input) is pinned already
            if m.groups == 1:
                self.uf.attach(src.group, name, _CONV_IN)
                self.uf.read(src.group, src.paths)
                self.new_group(node, name, _CONV_OUT, 2 + len(m.kernel_size))
            elif m.groups == m.in_channels == m.out_channels:
                self.uf.attach(src.group, name, _DEPTHWISE)
                self.same(node, first, rank=2 + len(m.kernel_size), pooled=False)
            else:  # grouped: input block b feeds output block b only
                self.uf.attach(src.group, name, _GCONV_IN)
                self.uf.read(src.group, src.paths)
                self.new_group(node, name, _CONV_OUT, 2 + len(m.kernel_size))
        elif isinstance(m, nn.Linear) and src.rank == 2:
            self.uf.attach(src.group, name, _LINEAR_IN)
            self.uf.read(src.group, src.paths)
            self.new_group(node, name, _LINEAR_OUT, 2)
        elif isinstance(m, _BN) and src.rank is not None:
            self.uf.attach(src.group, name, _BATCHNORM)
            self.same(node, first)
            if m.weight is not None:
                self.info[node].paths = _minimal(p | {name} for p in src.paths)
        elif isinstance(m, _ADAPTIVE_POOL):
            self.same(node, first, pooled=_all_ones(m.output_size))
        elif isinstance(m, _POOL):
            self.same(node, first, pooled=False)
        elif isinstance(m, _CHANNELWISE):
            self.same(node, first)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, first, m.start_dim, m.end_dim)
        else:
            self.opaque(node, unknown=not isinstance(m, _KEPT_MODULES))

    def concat(self, node: torch.fx.Node) -> None:
        """``torch.cat`` along the channels: a composite of its inputs' groups, in order."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(tensors, list | tuple) or not all(
            isinstance(t, torch.fx.Node) and t in self.info for t in tensors
        ):
            self.opaque(node)
            return
        ranks = {self.info[t].rank for t in tensors}
        rank = ranks.pop() if len(ranks) == 1 else None
        if rank is None or not isinstance(dim, int) or dim % rank != 1:
            self.opaque(node)
            return
        parts: list[tuple[int, _Paths]] = []
        for t in tensors:
            info = self.info[t]
            parts.extend(info.parts or [(info.group, info.paths)])
        pooled = all(self.info[t].pooled for t in tensors)
        self.info[node] = _Info(self.uf.new(pinned=True), rank, pooled, _UNSCALED, tuple(parts))

    def composite_module(
        self, node: torch.fx.Node, first: torch.fx.Node, m: nn.Module, name: str, src: _Info
    ) -> None:
        """A conv / Linear / BN reading a concat: its axis holds every part, at offsets."""
        assert src.parts is not None
        groups = [g for g, _ in src.parts]
        if isinstance(m, _CONV) and src.rank == 2 + len(m.kernel_size) and m.groups == 1:
            for g, paths in src.parts:
                self.uf.read(g, paths)
            self.uf.composite.append((name, _CONV_IN, groups))
            self.new_group(node, name, _CONV_OUT, src.rank)
        elif isinstance(m, nn.Linear) and src.rank == 2:
            for g, paths in src.parts:
                self.uf.read(g, paths)
            self.uf.composite.append((name, _LINEAR_IN, groups))
            self.new_group(node, name, _LINEAR_OUT, 2)
        elif (
            isinstance(m, _CONV)
            and src.rank == 2 + len(m.kernel_size)
            and m.groups == m.in_channels == m.out_channels
        ):
            self.uf.composite.append((name, _DEPTHWISE, groups))
            self.same(node, first, pooled=False)
        elif isinstance(m, _BN) and src.rank is not None:
            self.uf.composite.append((name, _BATCHNORM, groups))
            self.same(node, first)
            if m.weight is not None:
                scaled = tuple((g, _minimal(p | {name} for p in paths)) for g, paths in src.parts)
                self.info[node].parts = scaled
        else:
            self.opaque(node)

    def function(self, node: torch.fx.Node, first: torch.fx.Node) -> None:
        target = node.target
        if target in _POOL_FUNCS:
            self.same(node, first, pooled=False)
        elif target in _UNARY_FUNCS or _per_sample(target):
            self.same(node, first)
        elif target in _ADAPTIVE_FUNCS:
            self.same(node, first, pooled=_all_ones(_arg(node, 1, "output_size", None)))
        elif target is torch.flatten:
            self.flatten(node, first, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif target is torch.mean:
            self.mean(node, first)
        elif target is getattr and _arg(node, 1, "name", None) == "shape":
            self.info[node] = _Info(self.uf.new(pinned=True))  # a shape read pins nothing
        else:
            self.opaque(node, unknown=target not in _KEPT_FUNCS)

    def method(self, node: torch.fx.Node, first: torch.fx.Node) -> None:
        target = node.target
        if target in _UNARY_METHODS:
            self.same(node, first)
        elif target == "flatten":
            self.flatten(node, first, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif target == "mean":
            self.mean(node, first)
        elif target in _SHAPE_METHODS:
            self.info[node] = _Info(self.uf.new(pinned=True))  # a shape read pins nothing
        else:
            self.opaque(node, unknown=target not in _KEPT_METHODS)

    def flatten(self, node: torch.fx.Node, src: torch.fx.Node, start: object, end: object) -> None:
        """Flatten keeps channels 1:1 only when nothing but size-1 dims follow them."""
        s = self.info[src]
        if start == 1 and end == -1 and s.rank is not None and (s.rank == 2 or s.pooled):
            self.same(node, src, rank=2, pooled=False)
        else:
            self.opaque(node)
            if start == 1 and end == -1:  # channels mixed with positions, but a 2-D tensor:
                self.info[node].rank = 2  # a Linear after it still starts a prunable group

    def mean(self, node: torch.fx.Node, src: torch.fx.Node) -> None:
        """``x.mean(dims)`` over every spatial dim is global average pooling."""
        rank = self.info[src].rank
        dims = _arg(node, 1, "dim", None)
        keepdim = bool(_arg(node, 2, "keepdim", False))
        dims = [dims] if isinstance(dims, int) else dims
        if (
            rank is None
            or rank < 3
            or not isinstance(dims, (tuple, list))
            or not all(isinstance(d, int) for d in dims)
            or sorted(d % rank for d in dims) != list(range(2, rank))
        ):
            self.opaque(node)
            return
        self.same(node, src, rank=rank if keepdim else 2, pooled=keepdim)


def _per_sample(target: object) -> bool:
    module, name = getattr(target, "__module__", None) or "", getattr(target, "__name__", None)
    return any(module.startswith(m) and name == n for m, n in _PER_SAMPLE_FUNCS)


def _describe(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        target = type(modules[str(node.target)]).__name__
    elif isinstance(node.target, str):
        target = node.target
    else:
        target = getattr(node.target, "__name__", str(node.target))
    where = f"layer {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
    return f"{node.op.removeprefix('call_')} {target} at {where}"


def unsupported_ops(model: nn.Module) -> list[str]:
    """Ops of ``model`` the channel analysis does not recognise (it keeps their channels), e.g.
    ``["function roll at node 'roll'"]``. ``ValueError`` when ``torch.fx`` cannot trace it."""
    return _Walker(model).run(_trace(model).graph).unknown


def _analyse(model: nn.Module, *, need_bn: bool = True) -> list[_Group]:
    """The slimmable channel groups of ``model`` (``need_bn=False``: the prunable ones)."""
    graph = _trace(model).graph
    return _groups(model, _Walker(model).run(graph), need_bn=need_bn)


def prunable_groups(model: nn.Module) -> list[_Group]:
    """Channel groups whose channels can be removed together, BatchNorm or not (graph order).

    Each group's ``producers`` are the convs / Linears whose filters or neurons it is; ``members``
    every layer sliced with them. ``ValueError`` when ``torch.fx`` cannot trace the model.
    """
    return _analyse(model, need_bn=False)


def _channels(module: nn.Module, kind: str) -> int:
    if kind in (_CONV_OUT, _DEPTHWISE):
        return module.out_channels
    if kind in (_CONV_IN, _GCONV_IN):
        return module.in_channels
    if kind == _BATCHNORM:
        return module.num_features
    if kind == _LINEAR_OUT:
        return module.out_features
    return module.in_features


def _whole_size(model: nn.Module, members: Sequence[_Member]) -> int | None:
    """The group's channel count from the layers whose whole axis it is (None: unknown)."""
    sizes = {_channels(model.get_submodule(m.name), m.kind) for m in members if m.offset is None}
    return sizes.pop() if len(sizes) == 1 else None


def _resolve_concats(model: nn.Module, uf: _Analysis) -> None:
    """Attach each layer reading a concat to every part's group at the part's offset; a concat
    with a part of unknown size (e.g. the model's input) pins all of its parts."""
    for name, kind, parts in uf.composite:
        roots = [uf.find(g) for g in parts]
        sizes = [_whole_size(model, uf.members[r]) for r in roots]
        total = _channels(model.get_submodule(name), kind)
        if None in sizes or sum(sizes) != total:  # type: ignore[arg-type]
            for r in roots:
                uf.pinned[r] = True
            continue
        offset = 0
        for r, size in zip(roots, sizes, strict=True):
            uf.members[r].append(_Member(name, kind, offset))
            offset += size  # type: ignore[operator]


def _groups(model: nn.Module, uf: _Analysis, *, need_bn: bool = True) -> list[_Group]:
    _resolve_concats(model, uf)
    out = []
    for g in range(len(uf.parent)):
        if uf.find(g) != g or uf.pinned[g] or not uf.members[g]:
            continue
        members = uf.members[g]
        sizes = {
            _channels(model.get_submodule(m.name), m.kind) for m in members if m.offset is None
        }
        if len(sizes) != 1:
            continue  # e.g. a 1-channel map broadcast against a C-channel one
        bn_members = [
            m
            for m in members
            if m.kind == _BATCHNORM and model.get_submodule(m.name).weight is not None
        ]
        bns = [m.name for m in bn_members]
        if len(set(bns)) != len(bns):
            continue  # one BN holding this group twice (a concat of a group with itself)
        bn_offsets = {m.name: m.offset for m in bn_members if m.offset is not None}
        grouped = [
            model.get_submodule(m.name).groups
            for m in members
            if m.kind in (_GCONV_IN, _CONV_OUT) and model.get_submodule(m.name).groups > 1
        ]
        blocks = math.lcm(*grouped) if grouped else 1
        size = next(iter(sizes))
        if size % blocks:
            continue  # grouped convs that split these channels in incompatible blocks
        paths = _minimal(uf.reads[g])
        if not need_bn:
            if any(m.kind in (_CONV_OUT, _LINEAR_OUT) for m in members):
                out.append(_Group(members, size, bns, paths, bn_offsets, blocks))
        elif bns and paths and frozenset() not in paths:  # every read has passed a BN
            out.append(_Group(members, size, bns, paths, bn_offsets, blocks))
    return out


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BN) for m in model.modules())


def slimming_groups(model: nn.Module) -> list[list[str]]:
    """The slimmable BatchNorms grouped by tied channels (one list per group, graph order).

    BNs in one list share their channel indices (a residual stage, an expand conv's BN with the
    depthwise conv's BN) and are always pruned together. ``[]`` for a model without BatchNorm.
    """
    if not _has_bn(model):
        return []
    return [list(g.bns) for g in _analyse(model)]


def slimmable_bns(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers whose channels slimming can remove.

    A BN after a conv whose output channels can shrink (graph order). ``[]`` for a model without
    BatchNorm (e.g. the ``mlp`` space); ``ValueError`` when the model has BatchNorm but cannot be
    traced by ``torch.fx``.
    """
    return [name for group in slimming_groups(model) for name in group]


# bn_l1_penalty runs every training step: remember the traced answer per model object while its
# module tree (identities and weight shapes) stays the same.
_PENALTY_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[str]]] = (
    weakref.WeakKeyDictionary()
)


def _fingerprint(model: nn.Module) -> tuple:
    def shape(m: nn.Module) -> tuple[int, ...] | None:
        w = getattr(m, "weight", None)
        return tuple(w.shape) if isinstance(w, torch.Tensor) else None

    return tuple((name, id(m), shape(m)) for name, m in model.named_modules())


def bn_l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """strength * sum |gamma| over the slimmable BNs (the training regulariser).

    Add it to the training loss; its gradient ``strength * sign(gamma)`` drives unimportant
    channels' gammas to zero. A model without slimmable BNs gives a zero tensor.
    """
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or strength < 0:
        raise ValueError(
            f"bn_l1_penalty: strength must be a number >= 0, got strength={strength!r}; "
            "pass e.g. 1e-4"
        )
    key = _fingerprint(model)
    cached = _PENALTY_CACHE.get(model)
    if cached is None or cached[0] != key:
        cached = (key, slimmable_bns(model))
        _PENALTY_CACHE[model] = cached
    gammas = [model.get_submodule(n).weight for n in cached[1]]
    if not gammas:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return float(strength) * torch.stack([g.abs().sum() for g in gammas]).sum()


def _check_ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(
            f"{name} must be a fraction in [0, 1] of channels to remove, got "
            f"{name}={value!r}; pass e.g. 0.5"
        )
    return float(value)


def _check_input_shape(input_shape: object) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"slim: input_shape must be a non-empty tuple of positive ints (one example, no "
            f"batch dim), got input_shape={input_shape!r}; pass e.g. (1, 28, 28)"
        )
    return shape


def _order(scores: list[float]) -> list[int]:
    """Channel indices from least to most important (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def _global_keep(
    groups: list[_Group], scores: list[list[float]], ratio: float, min_channels: int
) -> list[list[int]]:
    total = sum(g.size for g in groups)
    n_remove = math.floor(ratio * total + 1e-9)
    candidates = []  # (score, fraction of the group ranked below, group, channel)
    for gi, (g, s) in enumerate(zip(groups, scores, strict=True)):
        order = _order(s)
        removable = order[: g.size - min(min_channels, g.size)]
        candidates += [(s[c], rank / g.size, gi, c) for rank, c in enumerate(removable)]
    candidates.sort()
    removed: list[set[int]] = [set() for _ in groups]
    for _, _, gi, c in candidates[:n_remove]:
        removed[gi].add(c)
    return [[c for c in range(g.size) if c not in r] for g, r in zip(groups, removed, strict=True)]


def _per_layer_keep(
    groups: list[_Group],
    scores: list[list[float]],
    per_layer: Mapping[str, float],
    min_channels: int,
    names: Sequence[Sequence[str]] | None = None,
    who: str = "slim",
) -> list[list[int]]:
    """``names[i]``: the layer names that address group i (default: its BatchNorms)."""
    names = names if names is not None else [g.bns for g in groups]
    valid = {name for ns in names for name in ns}
    unknown = [k for k in per_layer if k not in valid]
    if unknown:
        raise ValueError(
            f"{who}: per_layer names a layer that cannot be pruned: {unknown[0]!r}; "
            f"valid names: {sorted(valid)}"
        )
    ratios = {k: _check_ratio(f"per_layer[{k!r}]", v) for k, v in per_layer.items()}
    keep = []
    for g, s, ns in zip(groups, scores, names, strict=True):
        asked = [ratios[n] for n in ns if n in ratios]
        ratio = sum(asked) / len(asked) if asked else 0.0  # tied BNs: their mean ratio
        n_remove = min(math.floor(ratio * g.size + 1e-9), g.size - min(min_channels, g.size))
        removed = set(_order(s)[:n_remove])
        keep.append([c for c in range(g.size) if c not in removed])
    return keep


def _round_keep(
    groups: list[_Group], scores: list[list[float]], keep: list[list[int]], round_to: int
) -> list[list[int]]:
    """Round each pruned group's kept count up to a multiple of ``round_to`` (capped at its
    size) by restoring its highest-scoring removed channels: runtimes such as onnxruntime run
    convolutions in channel blocks, and odd channel counts can make a smaller model slower."""
    if round_to <= 1:
        return keep
    out = []
    for g, s, kept in zip(groups, scores, keep, strict=True):
        want = min(g.size, -(-len(kept) // round_to) * round_to)
        if len(kept) < g.size and want > len(kept):
            removed = [c for c in reversed(_order(s)) if c not in set(kept)]
            kept = sorted(kept + removed[: want - len(kept)])
        out.append(kept)
    return out


def _sliced(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def _set_param(module: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    p = getattr(module, name)
    if p is not None:
        setattr(module, name, nn.Parameter(_sliced(p, dim, idx), requires_grad=p.requires_grad))


def _slice_member(module: nn.Module, kind: str, idx: torch.Tensor) -> None:
    n = len(idx)
    if kind in (_CONV_OUT, _LINEAR_OUT, _DEPTHWISE):
        _set_param(module, "weight", 0, idx)
        _set_param(module, "bias", 0, idx)
        if kind == _LINEAR_OUT:
            module.out_features = n
        else:
            module.out_channels = n
        if kind == _DEPTHWISE:
            module.in_channels = module.groups = n
    elif kind == _GCONV_IN:  # each output block keeps its own input block's kept channels
        g = module.groups
        w_in, w_out = module.in_channels // g, module.out_channels // g
        local = [[i - b * w_in for i in idx.tolist() if i // w_in == b] for b in range(g)]
        assert len({len(x) for x in local}) == 1, "grouped conv input pruned unevenly"
        w = module.weight.detach()
        blocks = [
            w[b * w_out : (b + 1) * w_out].index_select(1, torch.tensor(local[b])) for b in range(g)
        ]
        module.weight = nn.Parameter(torch.cat(blocks).clone(), module.weight.requires_grad)
        module.in_channels = n
    elif kind in (_CONV_IN, _LINEAR_IN):
        _set_param(module, "weight", 1, idx)
        if kind == _LINEAR_IN:
            module.in_features = n
        else:
            module.in_channels = n
    else:  # BatchNorm
        _set_param(module, "weight", 0, idx)
        _set_param(module, "bias", 0, idx)
        for buf in ("running_mean", "running_var"):
            if getattr(module, buf) is not None:
                setattr(module, buf, _sliced(getattr(module, buf), 0, idx))
        module.num_features = n


def _output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of every output tensor for one zero input, in eval mode (modes restored)."""
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else None)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    flat: Iterable = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(o.shape) for o in flat if isinstance(o, torch.Tensor)]


def slim(
    model: nn.Module,
    ratio: float,
    input_shape: tuple[int, ...],
    *,
    per_layer: Mapping[str, float] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    by_position: bool = False,
) -> nn.Module:
    """Return a NEW, physically smaller model (deepcopy; the input is not modified).

    Args:
        ratio: fraction of all slimmable channels removed by one global |gamma| threshold (the
            paper's): the ``floor(ratio * n)`` lowest-scoring channels go. Ignored with
            ``per_layer``.
        input_shape: one example's shape; the result is checked to give outputs of the same shape.
        per_layer: BN name -> fraction of that BN's channels removed by its own |gamma| ranking;
            BNs not named are not pruned. BNs tied into one group (``slimming_groups``) prune the
            group by the mean of the ratios given for them.
        min_channels: channels every group keeps at least (its highest-|gamma| ones).
        round_to: a pruned group keeps a multiple of this many channels (rounded up, restoring
            its highest-|gamma| channels), so that runtimes' blocked conv kernels stay fast.
        by_position: rank each group's channels by position instead of |gamma| (the leading
            ones score highest, each group on the same 1 .. 0 scale, so a global ``ratio``
            removes about that fraction of every group's trailing channels): for models whose
            channels are in importance order already, e.g. a weight-sharing supernet's
            sub-network, whose BN gammas were never pushed to zero.

    Raises ``ValueError`` for a model without BatchNorm, without a slimmable BN, or that
    ``torch.fx`` cannot trace, and for out-of-range arguments.
    """
    input_shape = _check_input_shape(input_shape)
    ratio = _check_ratio("ratio", ratio)
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(
            f"slim: min_channels must be an int >= 1, got min_channels={min_channels!r}; "
            "pass e.g. 1"
        )
    if not _has_bn(model):
        raise ValueError(
            f"slim: {type(model).__name__} has no BatchNorm layers; network slimming needs them "
            "(it prunes by BN scaling factors): use a space with batch_norm, or structured "
            "pruning instead"
        )
    groups = _analyse(model)
    if not groups:
        raise ValueError(
            f"slim: {type(model).__name__} has BatchNorm layers but none can be slimmed (each is "
            "tied to the model's input or output, a concat, a reshape or another op whose "
            "channels cannot shrink, or its channels also reach a layer without passing a BN); "
            "nothing to prune: use structured pruning instead"
        )
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(
            f"slim: round_to must be an int >= 1, got round_to={round_to!r}; pass e.g. 4"
        )
    scores = [
        [1.0 - c / g.size for c in range(g.size)] if by_position else g.scores(model).tolist()
        for g in groups
    ]
    keep = select_channels(
        groups,
        scores,
        ratio=ratio,
        per_layer=per_layer,
        min_channels=min_channels,
        round_to=round_to,
        who="slim",
    )
    return cut(model, groups, keep, input_shape)


def select_channels(
    groups: list[_Group],
    scores: list[list[float]],
    *,
    ratio: float,
    per_layer: Mapping[str, float] | None = None,
    names: Sequence[Sequence[str]] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    who: str = "prune",
) -> list[list[int]]:
    """The channels each group keeps: the ``ratio`` lowest-scoring ones of all groups removed
    (one global ranking), or per group by ``per_layer[name]`` (``names[i]`` address group i);
    at least ``min_channels`` kept per group, kept counts rounded up to ``round_to``."""
    ratio = _check_ratio("ratio", ratio)
    if per_layer is not None:
        keep = _per_layer_keep(groups, scores, per_layer, min_channels, names, who)
    else:
        keep = _global_keep(groups, scores, ratio, min_channels)
    return _balance(groups, scores, _round_keep(groups, scores, keep, round_to))


def _balance(
    groups: list[_Group], scores: list[list[float]], keep: list[list[int]]
) -> list[list[int]]:
    """A group read or made by grouped convs keeps the same number of channels in each of its
    ``blocks`` (the kept count rounded up to a multiple), its best ones per block."""
    out = []
    for g, s, kept in zip(groups, scores, keep, strict=True):
        if g.blocks > 1 and len(kept) < g.size:
            per, width = -(-len(kept) // g.blocks), g.size // g.blocks
            kept = sorted(
                c
                for b in range(g.blocks)
                for c in sorted(range(b * width, (b + 1) * width), key=lambda i: -s[i])[:per]
            )
        out.append(kept)
    return out


def cut(
    model: nn.Module, groups: list[_Group], keep: list[list[int]], input_shape: tuple[int, ...]
) -> nn.Module:
    """A NEW model with only the ``keep[i]`` channels of each group (every member sliced);
    checked to give outputs of the original shapes."""
    reference = _output_shapes(model, input_shape)
    new = copy.deepcopy(model)
    # positions removed on each layer axis; an axis holding several groups (a concat) loses
    # each group's channels at that group's offset
    removed: dict[tuple[str, str], set[int]] = {}
    for g, kept in zip(groups, keep, strict=True):
        gone = set(range(g.size)) - set(kept)
        for m in g.members:
            off = m.offset or 0
            removed.setdefault((m.name, m.kind), set()).update(off + c for c in gone)
    for (name, kind), gone in removed.items():
        if gone:
            module = new.get_submodule(name)
            total = _channels(module, kind)
            idx = torch.tensor([i for i in range(total) if i not in gone], dtype=torch.long)
            _slice_member(module, kind, idx)
    got = _output_shapes(new, input_shape)
    if got != reference:
        raise RuntimeError(
            f"output shapes changed from {reference} to {got} after removing channels; this "
            "is a bug in the channel-dependency analysis, please report it with the model"
        )
    return new
