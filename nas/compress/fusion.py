"""Layer fusion: fold each BatchNorm that directly follows a convolution (or a Linear) into it.

In eval mode a BatchNorm is the per-channel affine map ``y = g * (x - mean) / sqrt(var + eps) + b``,
so after a convolution it can be absorbed into the convolution's weight and bias::

    s  = g / sqrt(var + eps)            (one factor per output channel)
    W' = W * s                          (each output filter scaled)
    b' = (bias - mean) * s + b          (bias = 0 when the conv has none)

A Linear followed by a BatchNorm1d on its (batch, features) output folds the same way (each output
neuron's row scaled). The pairs come from the model's traced graph (``torch.fx``): a conv's or
Linear's output that feeds exactly one BatchNorm and nothing else, each module called once.
Models fx cannot trace fall back to the pairs that sit next to each other in a plain
``nn.Sequential``. The folded model keeps the
original classes and module names; each folded BatchNorm becomes ``nn.Identity``, so parameter
names (and the layer names quantization maps bits to) do not change.

The export folds every model this way and checks it (:func:`fuse_verified`): the folded model's
outputs on real inputs must equal the original's within 1e-5, or 1e-4 of the largest output
magnitude where that is more (float32 rounding of ~50 folded layers: a MobileNetV2 whose BatchNorm
statistics come from a few images differs by 1.2e-5 at outputs up to 0.87; a folding bug shows
as an error the size of an activation), or nothing is exported. A ReLU after
a folded conv is fused by onnxruntime's graph optimizer (``FusedConv``) when the model is loaded.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import fx, nn

__all__ = ["FUSION_ATOL", "FUSION_RTOL", "fold_bn", "foldable_pairs", "fuse_verified"]

FUSION_ATOL = 1e-5
FUSION_RTOL = 1e-4  # of the largest output magnitude, where that allows more than FUSION_ATOL

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # not ConvTranspose: its weight is (in, out, ...)
_PRODUCERS = (*_CONVS, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_bn(model: nn.Module) -> nn.Module:
    """A new eval-mode model with every conv -> BatchNorm pair folded into the conv.

    The original model is not changed. Folded convs get a bias (created when they had none); the
    BatchNorms are replaced by ``nn.Identity``. In eval mode the outputs equal the original's up
    to float rounding (~1e-6).
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in foldable_pairs(folded):
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        _fold_into(conv, bn)
        _set_submodule(folded, bn_name, nn.Identity())
    return folded


def fuse_verified(
    model: nn.Module, x: torch.Tensor, atol: float = FUSION_ATOL, rtol: float = FUSION_RTOL
) -> tuple[nn.Module, dict[str, float]]:
    """``fold_bn(model)`` checked on the inputs ``x``: (folded model, {pairs, max_abs_diff}).

    ``RuntimeError`` when an output differs by more than ``max(atol, rtol * max |output|)`` (the
    model is not exported).
    """
    folded = fold_bn(model)
    pairs = len(foldable_pairs(model)) if any(_is_norm(m) for m in model.modules()) else 0
    was = model.training
    model.eval()
    diff, tol = 0.0, atol
    try:
        if pairs:
            with torch.no_grad():
                want = model(x)
                diff = float((folded(x) - want).abs().max())
            tol = max(atol, rtol * float(want.abs().max()))
    finally:
        model.train(was)
    if not diff <= tol:
        raise RuntimeError(
            f"layer fusion changed the model's outputs by up to {diff:.2e} (> {tol:.2g}); "
            "not exported. This is a bug in BatchNorm folding, please report it with the model"
        )
    return folded, {"folded_pairs": float(pairs), "max_abs_diff": diff}


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, BatchNorm name)`` for each BatchNorm whose only input is a conv's output."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception:  # fx cannot trace data-dependent control flow: use plain Sequentials
        return _sequential_pairs(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_norm(modules.get(node.target)):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and _is_producer(modules.get(src.target))
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
            and len(node.args) == 1
            and not node.kwargs
            and modules[node.target].num_features == _out(modules[src.target])
        ):
            pairs.append((src.target, node.target))
    return pairs


class _LayerTracer(fx.Tracer):
    """Traces subclasses of conv/Linear/BatchNorm (e.g. QAT layers) as the one call they are."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_PRODUCERS, *_NORMS)) or super().is_leaf_module(m, qualname)


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, seq in model.named_modules():
        if type(seq).forward is not nn.Sequential.forward or not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            if _is_producer(a) and _is_norm(b) and b.num_features == _out(a):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def _is_producer(m: nn.Module | None) -> bool:
    """A layer a following BatchNorm folds into: a conv, or a Linear."""
    return isinstance(m, _PRODUCERS)


def _out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _is_norm(m: nn.Module | None) -> bool:
    # without running statistics a BatchNorm normalises by the batch even in eval: not foldable
    return isinstance(m, _NORMS) and m.running_mean is not None and m.running_var is not None


@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    w = conv.weight
    scale = torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
    shift = -bn.running_mean.to(torch.float64) * scale
    if bn.weight is not None:
        scale = scale * bn.weight.to(torch.float64)
        shift = shift * bn.weight.to(torch.float64)
    if bn.bias is not None:
        shift = shift + bn.bias.to(torch.float64)
    bias = conv.bias.to(torch.float64) if conv.bias is not None else torch.zeros_like(scale)
    new_w = w.to(torch.float64) * scale.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = bias * scale + shift
    conv.weight = nn.Parameter(new_w.to(w.dtype), requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=w.requires_grad)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
