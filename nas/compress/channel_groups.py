"""Which channels must be removed together: Torch-Pruning's dependency graph, read for our pruners.

Structured pruning (``filter_pruning``) and network slimming (``slimming``) remove whole channels,
and a channel is seldom one layer's alone: a conv's filters are tied to the BatchNorm after it, to
the depthwise conv they feed, to the input columns of every layer that reads them and, across a
residual add or a squeeze-excite product, to every other layer whose output they are added to or
multiplied with. This module gets those *channel groups* from Torch-Pruning's ``DependencyGraph``
(DepGraph, Fang et al. 2023, MIT), which traces the autograd graph of one forward pass and follows
channels through convs, Linears, norms, concats, flattens, permutes, attention's Linears on token
tensors and unwrapped parameters (a ViT's class token and position embedding). Our pruners rank the
channels (``select_channels``) and Torch-Pruning slices every member of a group (``prune``).

Torch-Pruning treats every op it does not recognise as element-wise (channel ``i`` in is channel
``i`` out). That is wrong for an op such as ``torch.roll`` along the channels, so a group is
*pinned* (its channels are kept, never pruned wrongly) when it passes through:

- an op outside the known channel-preserving ones (``unsupported_ops`` names them);
- the model's output, or an element-wise op with an operand that is not a layer's output (the
  model's input, a buffer): those channels cannot shrink;
- a concat or split along another dim than 1, an unbind or a slice (attention's fused ``qkv``:
  heads are ``head_pruning``'s job);
- layers whose channel counts disagree (a 1-channel map broadcast against a C-channel one), or a
  conv with a channel multiplier (``groups == in_channels != out_channels``).

A group read or made by grouped convs (``1 < groups``, not depthwise) removes the same positions
from each of its ``blocks`` (Torch-Pruning slices a grouped conv's input that way).
"""

from __future__ import annotations

import copy
import math
import numbers
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "Analysis",
    "Group",
    "analyse",
    "check_fraction",
    "check_input_shape",
    "output_shapes",
    "pruned_copy",
    "select_channels",
    "unsupported_ops",
]

_ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# autograd ops (grad_fn name without "Backward<n>") that keep channel i in place: activations,
# arithmetic, pooling, global means, and the moves Torch-Pruning follows by channel identity
_CHANNELWISE_OPS = """
Relu Relu6 Hardtanh Hardswish Hardsigmoid Sigmoid Tanh Silu Gelu Mish LeakyRelu Elu Selu
Celu Softplus Clamp ClampMin ClampMax Threshold Add Sub Mul Div Neg Abs Pow Sqrt Rsqrt Exp
Reciprocal Mean MaxPool1DWithIndices MaxPool2DWithIndices MaxPool3DWithIndices AvgPool1D
AvgPool2D AvgPool3D AdaptiveAvgPool1D AdaptiveAvgPool2D AdaptiveAvgPool3D AdaptiveMaxPool1D
AdaptiveMaxPool2D AdaptiveMaxPool3D T Transpose Permute Select Addmm Mm Clone ToCopy
NativeDropout Squeeze Unsqueeze Expand View Reshape UnsafeView Cat
"""
_CHANNELWISE = frozenset(_CHANNELWISE_OPS.split())
_OPERANDS = frozenset({"Add", "Sub", "Mul", "Div"})  # both operands carry the channels
_SUFFIX = re.compile(r"Backward\d*$")


@dataclass
class Group:
    """Channels that are kept or removed together, index by index (``size`` of them)."""

    size: int
    producers: list[str]  # convs / Linears (not depthwise) whose output channels these are
    bns: list[str]  # affine BatchNorms in the group, graph order
    blocks: int = 1  # grouped convs read or make it: the same positions go from every block
    outputs: list[str] = field(default_factory=list)  # every conv / Linear pruned on its output
    pinned_by: str | None = None  # why its channels must be kept (None: prunable)
    # per member module name: its index on the pruned axis for each group channel
    index: dict[str, list[int]] = field(default_factory=dict)
    # the root layer's channels each group channel stands for: more than one where the graph
    # ties them together (a ghost module's cheap half is a depthwise conv of its primary half)
    roots: list[list[int]] = field(default_factory=list)
    _root: tuple[nn.Module, object] | None = field(default=None, repr=False)


@dataclass
class Analysis:
    """The groups of one model object (``prune`` slices that object in place)."""

    model: nn.Module
    groups: list[Group]  # prunable ones, graph order
    pinned: list[Group]
    unknown: list[str]  # ops outside the known channel-preserving ones
    graph: object = field(repr=False, default=None)
    names: Mapping[object, str] = field(repr=False, default_factory=dict)  # module -> name

    def prune(self, keep: Sequence[Sequence[int]]) -> None:
        """Remove from ``model`` every channel of ``groups[i]`` not in ``keep[i]``."""
        for g, kept in zip(self.groups, keep, strict=True):
            kept_set = {int(c) for c in kept}
            gone = sorted(r for c in range(g.size) if c not in kept_set for r in g.roots[c])
            if gone:
                assert g._root is not None
                module, fn = g._root
                self.graph.get_pruning_group(module, fn, gone).prune(record_history=False)

    def chain(self, bn: str) -> list[str]:
        """The BatchNorms a channel passes in series up to ``bn``, ``bn`` included: back
        through activations and depthwise convs to the conv or Linear that made it."""
        node = self.graph.module2node[self.model.get_submodule(bn)]
        out = [bn]
        while len(node.inputs) == 1:
            node = node.inputs[0]
            module = node.module
            if isinstance(module, _BNS):
                out.append(self.names[module])
            elif not (_depthwise(module) or _op(node) in _CHANNELWISE - _OPERANDS):
                break
        return out


def check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(
            f"{name} must be a fraction in [0, 1] of channels to remove, got "
            f"{name}={value!r}; pass e.g. 0.5"
        )
    return float(value)


def check_input_shape(input_shape: object, who: str) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"{who}: input_shape must be a non-empty tuple of positive ints (one example, no "
            f"batch dim), got input_shape={input_shape!r}; pass e.g. (1, 28, 28)"
        )
    return shape


def _depthwise(module: object) -> bool:
    return (
        isinstance(module, _CONVS)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _grouped(module: object) -> bool:
    """A grouped conv that is not depthwise (``1 < groups``)."""
    return isinstance(module, _CONVS) and module.groups > 1 and not _depthwise(module)


def _op(node: object) -> str:
    fn = getattr(node, "grad_fn", None)
    return _SUFFIX.sub("", fn.name()) if hasattr(fn, "name") else "?"


def _describe(node: object) -> str:
    fn = getattr(node, "grad_fn", None)
    raw = fn.name() if hasattr(fn, "name") else type(fn).__name__
    return f"op {_op(node).lower()} ({raw})"


def _example(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    param = next(model.parameters(), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, *input_shape, generator=gen)
    return x.to(param.device if param is not None else "cpu")


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> object:
    import torch_pruning as tp

    modes = {m: m.training for m in model.modules()}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()  # BN statistics untouched, dropout and stochastic depth off
    try:
        for p in frozen:  # the trace follows gradients: a frozen layer would vanish from it
            p.requires_grad_(True)
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # "Unwrapped parameters detected" (class tokens)
            return tp.DependencyGraph().build_dependency(
                model, _example(model, input_shape), verbose=False
            )
    except Exception as e:
        raise ValueError(
            f"the channel analysis cannot trace {type(model).__name__} with one input of shape "
            f"{tuple(input_shape)}: {type(e).__name__}: {e}"
        ) from e
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m, mode in modes.items():
            m.training = mode


def _node_problem(node: object, graph: object) -> str | None:
    """Why channels cannot follow this node, or None."""
    import torch_pruning as tp

    kind, fn = node.type, getattr(node, "grad_fn", None)
    t = tp.ops.OPTYPE
    if kind == t.OUTPUT:
        return "the model's output"
    if kind in (t.UNBIND, t.SLICE):
        return _describe(node)
    if kind in (t.CONCAT, t.SPLIT):
        dim = getattr(fn, "_saved_dim", 1)
        return None if dim == 1 else f"{_describe(node)} along dim {dim}"
    if kind in (t.ELEMENTWISE, t.RESHAPE, t.EXPAND):
        name = _op(node)
        if name not in _CHANNELWISE:
            return _describe(node)
        nexts = getattr(fn, "next_functions", ())
        if name in _OPERANDS and len(nexts) == 2 and any(f is None for f, _ in nexts):
            return f"{_describe(node)} with the model's input or a buffer"
        return None
    module = node.module
    if _grouped(module) and (
        module.in_channels == module.groups or getattr(module, "transposed", False)
    ):
        return f"layer {graph._module2name.get(module, '?')!r} (channel multiplier)"
    return None


def _axis(graph: object, module: nn.Module, out: bool) -> int | None:
    return graph.get_out_channels(module) if out else graph.get_in_channels(module)


def _tied(graph: object, items: Sequence, size: int) -> list[list[int]]:
    """The root indices each group channel stands for, as classes: a concat of two parts of the
    same group (a ghost module's halves, the cheap one a depthwise conv of the primary one)
    ties a channel of one part to one of the other, and removing either removes both. Found by
    pruning one root index at a time, only for groups with such a concat."""
    import torch_pruning as tp

    nodes = {item.dep.target for item in items}
    if not any(
        n.type == tp.ops.OPTYPE.CONCAT and sum(i in nodes for i in n.inputs) > 1 for n in nodes
    ):
        return [[r] for r in range(size)]
    root, fn = items[0].dep.target.module, items[0].dep.handler
    classes, seen = [], set()
    for r in range(size):
        if r in seen:
            continue
        probe = graph.get_pruning_group(root, fn, [r])
        tied = {r} | {i for it in probe if it.dep.target.module is root for i in it.idxs}
        classes.append(sorted(tied))
        seen |= tied
    return classes


def _group(graph: object, items: Iterable, names: Mapping[object, str], order: dict) -> Group:
    """One of our ``Group``s from a Torch-Pruning group with every root index."""
    items = list(items)
    root = items[0]
    classes = _tied(graph, items, len(root.idxs))
    size = len(classes)
    producers, outputs, bns, blocks, index, pinned_by = [], [], [], [1], {}, None
    for item in items:
        dep, idxs, roots = item.dep, list(item.idxs), list(item.root_idxs)
        node, module = dep.target, dep.target.module
        pinned_by = pinned_by or _node_problem(node, graph)
        name = names.get(module)
        if name is None or not isinstance(module, nn.Module):
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if out and isinstance(module, (*_ROOTS, *_BNS)) and not node.outputs:
            pinned_by = pinned_by or "the model's output"
        at = dict(zip(roots, idxs, strict=True))
        per_channel = [next((at[r] for r in c if r in at), 0) for c in classes]
        count = _axis(graph, module, out)
        if count is not None and idxs and max(idxs) >= count:
            pinned_by = pinned_by or f"layer {name!r} (its channel count disagrees)"
        if _grouped(module):
            blocks.append(module.groups)
        if out and isinstance(module, _ROOTS):
            outputs.append(name)
        if out and isinstance(module, _ROOTS) and not _depthwise(module):
            producers.append(name)
            index.setdefault(name, per_channel)
        if isinstance(module, _BNS) and module.weight is not None and name not in bns:
            bns.append(name)
            index.setdefault(name, per_channel)
    lcm = math.lcm(*blocks)
    if size % lcm:
        pinned_by = pinned_by or "grouped convs that split the channels in different blocks"
    return Group(
        size=size,
        producers=sorted(set(producers), key=order.__getitem__),
        outputs=sorted(set(outputs), key=order.__getitem__),
        bns=sorted(bns, key=order.__getitem__),
        blocks=lcm,
        pinned_by=pinned_by,
        index=index,
        roots=classes,
        _root=(root.dep.target.module, root.dep.handler),
    )


def analyse(model: nn.Module, input_shape: tuple[int, ...]) -> Analysis:
    """The channel groups of ``model`` for one input of ``input_shape`` (no batch dim).

    ``ValueError`` when one forward pass of that input cannot be traced.
    """
    import torch_pruning as tp

    graph = _trace(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    groups, pinned = [], []
    for items in graph.get_all_groups(root_module_types=_ROOTS):
        g = _group(graph, items, names, order)
        if not g.producers:
            continue
        (pinned if g.pinned_by else groups).append(g)
    groups.sort(key=lambda g: order[g.producers[0]])
    unknown = sorted(
        {
            _describe(n)
            for n in graph.module2node.values()
            if n.type == tp.ops.OPTYPE.ELEMENTWISE and _op(n) not in _CHANNELWISE
        }
    )
    return Analysis(model, groups, pinned, unknown, graph, names)


def unsupported_ops(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Ops of ``model`` the analysis does not know to keep channels in place (it keeps the
    channels of the groups they touch), e.g. ``["op roll (RollBackward0)"]``."""
    return analyse(model, input_shape).unknown


# ----------------------------------------------------------------------------- choosing channels


def _order(scores: Sequence[float]) -> list[int]:
    """Channel indices from least to most important (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def _block_scores(g: Group, s: Sequence[float]) -> list[float]:
    """A grouped group's score per position within a block: the mean over its blocks."""
    width = g.size // g.blocks
    return [sum(s[b * width + c] for b in range(g.blocks)) / g.blocks for c in range(width)]


def _global_keep(
    groups: list[Group], scores: list[list[float]], ratio: float, min_channels: int
) -> list[int]:
    """Kept count per group: the ``floor(ratio * n)`` lowest channels of all groups removed."""
    total = sum(g.size for g in groups)
    n_remove = math.floor(ratio * total + 1e-9)
    candidates = []  # (score, fraction of the group ranked below, group)
    for gi, (g, s) in enumerate(zip(groups, scores, strict=True)):
        order = _order(s)
        removable = order[: g.size - min(min_channels, g.size)]
        candidates += [(s[c], rank / g.size, gi) for rank, c in enumerate(removable)]
    candidates.sort()
    kept = [g.size for g in groups]
    for _, _, gi in candidates[:n_remove]:
        kept[gi] -= 1
    return kept


def _per_layer_keep(
    groups: list[Group],
    per_layer: Mapping[str, float],
    min_channels: int,
    names: Sequence[Sequence[str]],
    who: str,
) -> list[int]:
    valid = {name for ns in names for name in ns}
    unknown = [k for k in per_layer if k not in valid]
    if unknown:
        raise ValueError(
            f"{who}: per_layer names a layer that cannot be pruned: {unknown[0]!r}; "
            f"valid names: {sorted(valid)}"
        )
    ratios = {k: check_fraction(f"per_layer[{k!r}]", v) for k, v in per_layer.items()}
    kept = []
    for g, ns in zip(groups, names, strict=True):
        asked = [ratios[n] for n in ns if n in ratios]
        ratio = sum(asked) / len(asked) if asked else 0.0  # tied layers: their mean ratio
        n_remove = min(math.floor(ratio * g.size + 1e-9), g.size - min(min_channels, g.size))
        kept.append(g.size - n_remove)
    return kept


def select_channels(
    groups: list[Group],
    scores: list[list[float]],
    *,
    ratio: float,
    per_layer: Mapping[str, float] | None = None,
    names: Sequence[Sequence[str]] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    who: str = "prune",
) -> list[list[int]]:
    """The channels each group keeps, its highest-scoring ones.

    How many: ``ratio`` of all groups' channels removed by one global ranking, or per group by
    ``per_layer[name]`` (``names[i]``: the layer names that address group i, default its
    BatchNorms); at least ``min_channels``; a pruned group's count rounded up to a multiple of
    ``round_to`` (runtimes run convolutions in channel blocks: odd counts can make a smaller
    model slower) and of its ``blocks``.
    """
    ratio = check_fraction("ratio", ratio)
    if per_layer is not None:
        names = names if names is not None else [g.bns for g in groups]
        counts = _per_layer_keep(groups, per_layer, min_channels, names, who)
    else:
        counts = _global_keep(groups, scores, ratio, min_channels)
    keep = []
    for g, s, n in zip(groups, scores, counts, strict=True):
        if n < g.size:
            step = math.lcm(max(round_to, 1), g.blocks) if round_to > 1 else g.blocks
            n = min(g.size, -(-n // step) * step)
            if n % g.blocks:  # round_to fits no block multiple below the size: keep all
                n = g.size
        if g.blocks > 1:
            width, per = g.size // g.blocks, n // g.blocks
            local = sorted(_order(_block_scores(g, s))[width - per :])
            keep.append([b * width + c for b in range(g.blocks) for c in local])
        else:
            keep.append(sorted(_order(s)[g.size - n :]))
    return keep


def output_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
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


def pruned_copy(
    model: nn.Module,
    input_shape: tuple[int, ...],
    choose: object,
) -> nn.Module:
    """A NEW model: ``choose(analysis)`` (of a deep copy) gives the channels each of its groups
    keeps; every member is sliced; checked to run and give outputs of the original shapes."""
    try:
        reference = output_shapes(model, input_shape)
    except Exception as e:
        raise ValueError(
            f"the channel analysis cannot trace {type(model).__name__} with one input of shape "
            f"{tuple(input_shape)}: {type(e).__name__}: {e}"
        ) from e
    new = copy.deepcopy(model)
    analysis = analyse(new, input_shape)
    analysis.prune(choose(analysis))  # type: ignore[operator]
    try:
        got = output_shapes(new, input_shape)
    except Exception as e:
        got = [f"an error: {type(e).__name__}: {e}"]  # type: ignore[list-item]
    if got != reference:
        raise RuntimeError(
            f"output shapes changed from {reference} to {got} after removing channels; this "
            "is a bug in the channel-dependency analysis, please report it with the model"
        )
    return new
