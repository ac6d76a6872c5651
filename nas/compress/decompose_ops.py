"""Tensor decomposition of conv kernels with TensorLy (PyTorch backend): Tucker-2 and CP.

A conv weight ``W`` (``C_out x C_in x kh x kw``) is a 4-way tensor.

- **Tucker-2** (Kim et al. 2016): a partial Tucker decomposition on the two channel modes,
  ``W ~ core x_0 U_out x_1 U_in`` with ``core`` ``R_out x R_in x kh x kw``. The conv becomes
  ``Tucker2``: a 1x1 conv ``C_in -> R_in`` (``U_in^T``), the original kh x kw conv
  ``R_in -> R_out`` with the core (its stride, padding, dilation), and a 1x1 conv
  ``R_out -> C_out`` (``U_out``, the original bias). Ranks: ``R = round(ratio * C)`` per mode.
- **CP** (Lebedev et al. 2015): ``W ~ sum_r l_r a_r (x) b_r (x) c_r (x) d_r`` of rank ``R``. The
  conv becomes ``CPConv``: a 1x1 conv ``C_in -> R`` (``b``), a depthwise ``kh x 1`` conv
  (``c``, the vertical stride / padding), a depthwise ``1 x kw`` conv (``d``, the horizontal
  ones), and a 1x1 conv ``R -> C_out`` (``l a``, the original bias). ``R = round(ratio *
  min(C_in, C_out))``.

Both are fitted by TensorLy (HOOI, resp. ALS, initialised by SVD, at most 50 resp. 100 iterations,
stopping early when the error improves by less than 1e-4 resp. 1e-5) and are approximations: the
pipeline fine-tunes afterwards. CP's ALS runs with a matricised-tensor times Khatri-Rao product
that contracts the kernel with one factor at a time (:func:`_mttkrp`); TensorLy's default forms
the Khatri-Rao product of the other three factors, a ``C_out * C_in * kh x R`` matrix for a
spatial mode (800 MB and ~3 s an iteration for a ResNet's 512 x 512 x 3 x 3 conv at R = 128,
where this takes 0.1 s).

Only ungrouped ``nn.Conv2d`` layers with a kernel larger than 1x1, zero padding, at least 4 input
channels and at least 64 input x output channels are candidates, and a layer is replaced only
where the decomposed sequence has fewer multiply-adds than the conv (counted at the positions each
part runs at, from one forward pass). :func:`ineligible` says why a model's convs are not
candidates (e.g. a MobileNet's k x k convs are depthwise, its stem reads the 3 image channels)."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from nas.compress.lowrank_ops import _check_input_shape, _check_ratio, _replace

__all__ = [
    "METHODS",
    "CPConv",
    "Tucker2",
    "decompose",
    "decompose_layer",
    "eligible_convs",
    "ineligible",
]

METHODS = ("tucker2", "cp")
# a conv with fewer input x output channels, or fewer input channels (a stem on 1-3 channel
# images) is left alone: its decomposition saves a few dozen weights (a 3-channel input mode
# cannot shrink) and adds two or three layers (a larger ONNX file)
MIN_CHANNEL_PAIRS = 64
MIN_IN_CHANNELS = 4


class Tucker2(nn.Sequential):
    """1x1 (C_in -> R_in), k x k core (R_in -> R_out), 1x1 (R_out -> C_out)."""


class CPConv(nn.Sequential):
    """1x1 (C_in -> R), depthwise kh x 1, depthwise 1 x kw, 1x1 (R -> C_out)."""


@dataclass
class _Conv:
    module: nn.Conv2d
    in_hw: tuple[int, int] = (0, 0)
    out_hw: tuple[int, int] = (0, 0)

    def macs(self, method: str | None = None, ranks: tuple[int, int] | int | None = None) -> int:
        m = self.module
        c_in, c_out = m.in_channels, m.out_channels
        kh, kw = m.kernel_size
        p_in, p_out = math.prod(self.in_hw), math.prod(self.out_hw)
        if method is None:
            return p_out * c_in * c_out * kh * kw
        if method == "tucker2":
            r_out, r_in = ranks  # type: ignore[misc]
            return p_in * c_in * r_in + p_out * (r_in * kh * kw * r_out + r_out * c_out)
        r = int(ranks)  # type: ignore[arg-type]
        mid = self.out_hw[0] * self.in_hw[1]  # after the vertical conv: H_out x W_in
        return p_in * c_in * r + mid * r * kh + p_out * r * kw + p_out * r * c_out


def _ranks(conv: nn.Conv2d, method: str, ratio: float, round_to: int) -> tuple[int, int] | int:
    def rank(full: int) -> int:
        r = min(full, max(1, round(ratio * full)))
        return min(full, -(-r // round_to) * round_to)

    if method == "tucker2":
        return rank(conv.out_channels), rank(conv.in_channels)
    return rank(min(conv.in_channels, conv.out_channels))


def _unfit(m: nn.Module) -> str | None:
    """Why conv ``m`` is no candidate (None: it is one), e.g. ``"grouped (groups=32)"``."""
    if type(m) is not nn.Conv2d:
        return "not an nn.Conv2d"
    if m.groups != 1:
        return f"grouped (groups={m.groups})"
    if m.kernel_size == (1, 1):
        return "1x1"
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return f"padded {m.padding_mode} / {m.padding!r}"
    if m.in_channels < MIN_IN_CHANNELS or m.in_channels * m.out_channels < MIN_CHANNEL_PAIRS:
        return f"too few channels ({m.in_channels} -> {m.out_channels})"
    return None


def _candidates(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, _Conv]:
    """Ungrouped Conv2d layers with a kernel > 1x1 and zero padding, sized by one forward."""
    out = {name: _Conv(m) for name, m in model.named_modules() if _unfit(m) is None}

    def hook(c: _Conv):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            c.in_hw = tuple(inputs[0].shape[-2:])  # type: ignore[assignment]
            c.out_hw = tuple(output.shape[-2:])  # type: ignore[assignment]

        return fn

    handles = [c.module.register_forward_hook(hook(c)) for c in out.values()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return {n: c for n, c in out.items() if c.out_hw != (0, 0)}


def eligible_convs(model: nn.Module, input_shape: tuple[int, ...], method: str) -> list[str]:
    """Convs that the decomposition at SOME rank (the smallest) would make cheaper."""
    _check_method(method)
    cands = _candidates(model, _check_input_shape(input_shape))
    return [
        n for n, c in cands.items() if c.macs(method, _ranks(c.module, method, 1e-9, 1)) < c.macs()
    ]


def ineligible(model: nn.Module) -> str:
    """One line on why the convs of a model without an eligible one are not, by kind, e.g.
    ``"MobileNetV2's convs: 1 too few channels, e.g. features.0.0 (3 -> 32); 17 grouped, e.g.
    features.1.conv.0.0 (groups=32); 34 1x1, e.g. features.1.conv.1"``."""
    kinds: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            why = _unfit(m) or "not cheaper decomposed"
            kinds.setdefault(why.split(" (")[0], []).append(f"{name} {why}")
    if not kinds:
        return f"{type(model).__name__} has no nn.Conv2d layer"
    parts = [
        f"{len(v)} {kind}, e.g. {v[0].replace(f' {kind}', '', 1)}" for kind, v in kinds.items()
    ]
    return f"{type(model).__name__}'s convs: " + "; ".join(parts)


def decompose(
    model: nn.Module,
    method: str,
    ratio: float,
    input_shape: tuple[int, ...],
    *,
    per_layer: Mapping[str, float] | None = None,
    round_to: int = 1,
    fit: bool = True,
) -> nn.Module:
    """A NEW model (input untouched) whose eligible convs are decomposed at ``ratio`` (per layer:
    ``per_layer[name]``); a conv is replaced only where its decomposition has fewer
    multiply-adds. ``fit=False`` builds the same structure without fitting (zero weights): the
    cheap shape estimate the search uses before training."""
    _check_method(method)
    _check_ratio("rank", ratio)
    for name, r in (per_layer or {}).items():
        _check_ratio(f"per_layer[{name!r}]", r)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"{method}: round_to must be an int >= 1, got {round_to!r}; pass e.g. 8")
    new = copy.deepcopy(model)
    cands = _candidates(new, _check_input_shape(input_shape))
    unknown = [n for n in per_layer or {} if n not in cands]
    if unknown:
        raise ValueError(
            f"{method}: per_layer names a layer that cannot be decomposed: {unknown[0]!r}; "
            f"valid names: {eligible_convs(model, input_shape, method)}"
        )
    for name, c in cands.items():
        ranks = _ranks(c.module, method, (per_layer or {}).get(name, ratio), round_to)
        if c.macs(method, ranks) >= c.macs():
            continue
        _replace(new, c.module, decompose_layer(c.module, method, ranks, fit=fit))
    return new


def decompose_layer(
    conv: nn.Conv2d, method: str, ranks: tuple[int, int] | int, *, fit: bool = True
) -> nn.Sequential:
    """The decomposed sequence standing in for ``conv`` (``ranks``: (R_out, R_in) for Tucker-2,
    R for CP)."""
    import tensorly as tl
    from tensorly.decomposition import parafac, partial_tucker

    w = conv.weight.detach().to(torch.float64)
    c_out, c_in, kh, kw = w.shape
    kw_ = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    bias = conv.bias is not None
    with tl.backend_context("pytorch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SVD init asks for more vectors than a mode has
        if method == "tucker2":
            r_out, r_in = ranks  # type: ignore[misc]
            first = nn.Conv2d(c_in, r_in, 1, bias=False, **kw_)
            core_conv = nn.Conv2d(
                r_in,
                r_out,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                bias=False,
                **kw_,
            )
            last = nn.Conv2d(r_out, c_out, 1, bias=bias, **kw_)
            seq: nn.Sequential = Tucker2(first, core_conv, last)
            if fit:
                (core, (u_out, u_in)), _ = partial_tucker(
                    w,
                    rank=[r_out, r_in],
                    modes=[0, 1],
                    init="svd",
                    n_iter_max=50,
                    random_state=0,
                )
                weights = [
                    u_in.T.reshape(r_in, c_in, 1, 1),
                    core,
                    u_out.reshape(c_out, r_out, 1, 1),
                ]
        else:
            r = int(ranks)  # type: ignore[arg-type]
            first = nn.Conv2d(c_in, r, 1, bias=False, **kw_)
            vertical = nn.Conv2d(
                r,
                r,
                (kh, 1),
                (conv.stride[0], 1),
                (conv.padding[0], 0),
                (conv.dilation[0], 1),
                groups=r,
                bias=False,
                **kw_,
            )
            horizontal = nn.Conv2d(
                r,
                r,
                (1, kw),
                (1, conv.stride[1]),
                (0, conv.padding[1]),
                (1, conv.dilation[1]),
                groups=r,
                bias=False,
                **kw_,
            )
            last = nn.Conv2d(r, c_out, 1, bias=bias, **kw_)
            seq = CPConv(first, vertical, horizontal, last)
            if fit:
                with _fast_mttkrp():
                    lam, (a, b, c, d) = parafac(
                        w,
                        rank=r,
                        init="svd",
                        n_iter_max=100,
                        tol=1e-5,
                        cvg_criterion="rec_error",
                        random_state=0,
                    )
                weights = [
                    b.T.reshape(r, c_in, 1, 1),
                    c.T.reshape(r, 1, kh, 1),
                    d.T.reshape(r, 1, 1, kw),
                    (a * lam[None, :]).reshape(c_out, r, 1, 1),
                ]
    with torch.no_grad():
        for layer, value in zip(seq, weights if fit else [None] * len(seq), strict=True):
            if value is None:
                layer.weight.zero_()
            else:
                layer.weight.copy_(value.to(layer.weight.dtype))
        if bias:
            seq[-1].bias.copy_(conv.bias.detach())
    seq.train(conv.training)
    return seq


def _mttkrp(
    tensor: torch.Tensor,
    cp_tensor: tuple[torch.Tensor | None, list[torch.Tensor]],
    mode: int,
) -> torch.Tensor:
    """``unfold(tensor, mode) @ khatri_rao(factors, weights, skip_matrix=mode)`` (TensorLy's
    ``unfolding_dot_khatri_rao``) without forming the Khatri-Rao product: the largest other
    mode is contracted first (one matrix product), then each remaining factor in turn."""
    weights, factors = cp_tensor
    others = [d for d in range(tensor.dim()) if d != mode]
    big = max(others, key=lambda d: tensor.shape[d])
    out = torch.tensordot(tensor, factors[big], dims=([big], [0]))  # the other dims, then rank
    dims = [d for d in range(tensor.dim()) if d != big]
    for d in others:
        if d != big:
            at = dims.index(d)
            shape = [1] * out.dim()
            shape[at], shape[-1] = factors[d].shape
            out = (out * factors[d].reshape(shape)).sum(at)
            dims.pop(at)
    return out if weights is None else out * weights


@contextmanager
def _fast_mttkrp() -> Iterator[None]:
    """TensorLy's ALS with :func:`_mttkrp`, for the duration of the block (then restored)."""
    from tensorly import tenalg

    backend = type(tenalg.current_backend())
    old = backend.__dict__.get("unfolding_dot_khatri_rao")
    backend.register_method("unfolding_dot_khatri_rao", _mttkrp)
    try:
        yield
    finally:
        if old is None:
            delattr(backend, "unfolding_dot_khatri_rao")
        else:
            backend.unfolding_dot_khatri_rao = old


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown decomposition {method!r}; use one of {', '.join(METHODS)}")
