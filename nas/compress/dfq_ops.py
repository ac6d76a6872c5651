"""Data-free quantization (Nagel et al. 2019): cross-layer equalization and bias correction.

No data is used. The model's chains ``conv_a -> BatchNorm -> ReLU / ReLU6 -> conv_b`` (``conv_b``
may be depthwise) are found in the traced graph, then:

1. **Expected inputs.** The BN after ``conv_a`` says each channel's pre-activation is about
   ``N(beta, gamma^2)``; the expected activation is the mean of that normal clipped by the
   activation (``[0, inf)`` for ReLU, ``[0, 6]`` for ReLU6).
2. **Folding.** Every BN is folded into its conv (:func:`nas.compress.fusion.fold_bn`).
3. **Cross-layer equalization.** For each chain, output channel ``i`` of ``conv_a`` is divided by
   ``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of ``conv_b`` multiplied by it (``r1``,
   ``r2``: the channel's weight ranges in the two layers), which leaves the function unchanged
   (ReLU is positively homogeneous; a ReLU6 becomes a per-channel clip at ``6 / s_i``, exact
   too) and gives every channel the same weight range, so one per-tensor int8 scale fits all.
   Depthwise convs, whose channels' ranges differ by orders of magnitude, gain the most.
4. **Bias correction.** Per-tensor int8 rounding of ``conv_b``'s weights shifts its output by
   ``(W_q - W) E[x]``; that expected error is subtracted from its bias.

The result is a float model with the same outputs (up to float rounding) that quantizes better
without calibration data; ``export_int8_dynamic`` then quantizes it with no data at all
(onnxruntime dynamic quantization: per-tensor int8 weights, activation ranges at run time).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import fx, nn

from nas.compress.fusion import fold_bn

__all__ = ["ChannelClip", "cross_layer_equalize", "dfq", "find_chains"]

_CONV = (nn.Conv2d, nn.Conv1d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class ChannelClip(nn.Module):
    """``min(max(x, 0), bound_c)`` per channel: a ReLU6 after its channels were rescaled."""

    def __init__(self, bound: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bound", bound.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return torch.minimum(torch.relu(x), self.bound.reshape(shape))


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_chains(model: nn.Module) -> list[tuple[str, str, str, str]]:
    """``(conv_a, bn, act, conv_b)`` module names, each output used once along the chain."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:
        return []
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1

    def mod(n: fx.Node | None, kinds: tuple) -> bool:
        return (
            n is not None
            and n.op == "call_module"
            and isinstance(mods.get(n.target), kinds)
            and calls[n.target] == 1
        )

    chains = []
    for a in graph.nodes:
        if not mod(a, _CONV):
            continue
        ca = mods[a.target]
        if ca.groups != 1 and not ca.groups == ca.in_channels == ca.out_channels:
            continue  # grouped, not depthwise
        bn = _single_user(a)
        act = _single_user(bn) if mod(bn, _BN) else None
        b = _single_user(act) if mod(act, (nn.ReLU, nn.ReLU6)) else None
        last = act
        while mod(b, (nn.Identity,)):  # e.g. a squeeze-excite slot left empty
            last, b = b, _single_user(b)
        if mod(b, _CONV) and b.args[0] is last:
            cb = mods[b.target]
            if cb.groups == 1 or cb.groups == cb.in_channels == cb.out_channels:
                chains.append((a.target, bn.target, act.target, b.target))
    return chains


def _clipped_normal_mean(mu: torch.Tensor, sigma: torch.Tensor, high: float) -> torch.Tensor:
    """E[min(max(Y, 0), high)] for Y ~ N(mu, sigma^2), elementwise (``high`` may be inf)."""
    sigma = sigma.abs().clamp_min(1e-8)
    normal = torch.distributions.Normal(0.0, 1.0)

    def part(t: torch.Tensor) -> torch.Tensor:  # E[Y; Y > t] - t P(Y > t), the tail above t
        z = (t - mu) / sigma
        return (mu - t) * (1 - normal.cdf(z)) + sigma * torch.exp(normal.log_prob(z))

    below_high = part(torch.zeros_like(mu))
    if math.isinf(high):
        return below_high
    return below_high - part(torch.full_like(mu, high))


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _in_ranges(conv: nn.Conv2d) -> torch.Tensor:
    """Per input channel of ``conv``: the max |weight| reading it."""
    w = conv.weight.detach().abs()
    if conv.groups == conv.in_channels and conv.groups > 1:  # depthwise: one filter per channel
        return w.reshape(w.shape[0], -1).amax(1)
    return w.transpose(0, 1).reshape(w.shape[1], -1).amax(1)


def cross_layer_equalize(model: nn.Module, chains, sweeps: int = 2) -> dict[str, torch.Tensor]:
    """Equalize each (folded) chain IN PLACE; returns the total scale per chain's act."""
    total = {act: torch.ones(model.get_submodule(a).out_channels) for a, _, act, _ in chains}
    for _ in range(sweeps):
        for a_name, _, act, b_name in chains:
            a, b = model.get_submodule(a_name), model.get_submodule(b_name)
            r1 = a.weight.detach().abs().reshape(a.out_channels, -1).amax(1)
            r2 = _in_ranges(b)
            s = torch.sqrt(r1 / r2.clamp_min(1e-12)).clamp(1e-4, 1e4)
            s = torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))
            with torch.no_grad():
                a.weight.div_(s.reshape(-1, *([1] * (a.weight.dim() - 1))))
                if a.bias is not None:
                    a.bias.div_(s)
                if b.groups == b.in_channels and b.groups > 1:
                    b.weight.mul_(s.reshape(-1, *([1] * (b.weight.dim() - 1))))
                else:
                    b.weight.mul_(s.reshape(1, -1, *([1] * (b.weight.dim() - 2))))
            total[act] = total[act] * s
    return total


def _weight_error(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric int8 rounding error of ``w`` (what a per-tensor int8 export does)."""
    scale = w.abs().max().clamp_min(1e-12) / 127
    return torch.round(w / scale).clamp(-127, 127) * scale - w


def dfq(model: nn.Module, *, bias_correction: bool = True) -> nn.Module:
    """A NEW float model: BN folded, chains equalized, biases corrected (no data used). Without
    ``bias_correction`` the result computes the same function as ``model`` (up to rounding)."""
    chains = find_chains(model)
    expected = {}
    for _, bn_name, act_name, b_name in chains:
        bn, act = model.get_submodule(bn_name), model.get_submodule(act_name)
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features)
        beta = bn.bias.detach() if bn.bias is not None else torch.zeros(bn.num_features)
        high = 6.0 if isinstance(act, nn.ReLU6) else math.inf
        expected[b_name] = (_clipped_normal_mean(beta, gamma, high), act_name, high)
    out = fold_bn(copy.deepcopy(model)).eval()
    scales = cross_layer_equalize(out, chains)
    for _, _, act_name, _ in chains:
        if isinstance(model.get_submodule(act_name), nn.ReLU6):
            _set(out, act_name, ChannelClip(6.0 / scales[act_name]))
    for b_name, (mean_x, act_name, _) in expected.items() if bias_correction else ():
        b = out.get_submodule(b_name)
        ex = mean_x / scales[act_name]  # the equalized activations are divided by s
        err = _weight_error(b.weight.detach())
        if b.groups == b.in_channels and b.groups > 1:
            shift = err.reshape(err.shape[0], -1).sum(1) * ex
        else:
            shift = err.reshape(err.shape[0], err.shape[1], -1).sum(2) @ ex
        with torch.no_grad():
            if b.bias is None:
                b.bias = nn.Parameter(torch.zeros(b.out_channels))
            b.bias.sub_(shift)
    return out
