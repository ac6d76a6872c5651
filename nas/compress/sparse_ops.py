"""Unstructured pruning and weight sharing on Linear / conv weights, as reparametrizations.

A pruned weight is ``original * mask`` (``torch.nn.utils.parametrize``): training goes on with the
zeros held (their gradient is zero), and :func:`bake` writes the effective weight back as a plain
parameter for export. A shared weight is ``codebook[index] * mask``: the ``2^bits`` centroids
(k-means over the layer's surviving weights, linear initialisation as in Han et al. 2016) are the
parameters, so fine-tuning updates each centroid with the summed gradient of its weights
(gradient sharing).

Pruning criteria (score of weight ``w_ij``; the lowest go): ``magnitude`` ``|w|``; ``gradient``
``|w * dL/dw|`` summed over batches of training data (first-order Taylor); ``activation``
``|w_ij| * mean |x_j|``, the weight scaled by how active its input unit is on training data.
Scope ``global`` ranks all layers' weights together, ``layer`` prunes each layer to the sparsity.
``gradual`` schedules (Zhu & Gupta 2017) raise the sparsity along training as
``s_t = s (1 - (1 - t)^3)`` for ``t`` from 0 to 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.compress._batches import over_batches

CRITERIA = ("magnitude", "gradient", "activation")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

__all__ = [
    "CRITERIA",
    "Masked",
    "Shared",
    "bake",
    "kmeans_1d",
    "prunable_weights",
    "prune_unstructured",
    "share_weights",
    "sparsity_of",
]


class Masked(nn.Module):
    """weight = original * mask (the mask a buffer, updated in place by gradual schedules)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class Shared(nn.Module):
    """weight = codebook[index] * mask; the codebook is the trainable parameter."""

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.to(torch.float32))
        self.register_buffer("index", index.to(torch.long))
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # w (the original) is not used
        return self.codebook[self.index] * self.mask

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.codebook))))


def prunable_weights(model: nn.Module) -> list[str]:
    """Linear / conv layers by name (their weights are pruned; biases are kept)."""
    return [n for n, m in model.named_modules() if isinstance(m, _LAYERS)]


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zeros among the prunable layers' (effective) weights."""
    ws = [model.get_submodule(n).weight.detach() for n in prunable_weights(model)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def _scores(
    model: nn.Module, names: list[str], criterion: str, data: tuple | None
) -> dict[str, torch.Tensor]:
    weights = {n: model.get_submodule(n).weight.detach().abs().float() for n in names}
    if criterion == "magnitude":
        return weights
    if data is None or len(data[0]) == 0:
        raise ValueError(
            f"unstructured pruning: the {criterion} criterion needs training examples "
            "(calibration data); none were given"
        )
    out: dict[str, torch.Tensor] = {n: torch.zeros_like(w) for n, w in weights.items()}
    hooks = []
    if criterion == "activation":
        acts = {n: torch.zeros(model.get_submodule(n).weight.shape[1]) for n in names}

        def record(name: str):
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                a = inputs[0].detach().abs()
                dims = [d for d in range(a.dim()) if d != 1]
                acts[name] += a.mean(dims) if a.dim() > 1 else a

            return hook

        hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]

    def add_gradients() -> None:
        for n in names:
            g = _grad_of(model.get_submodule(n))
            if g is not None:
                out[n] += (model.get_submodule(n).weight.detach() * g).abs()

    gradient = criterion == "gradient"
    try:
        over_batches(model, data, add_gradients if gradient else lambda: None, backward=gradient)
    finally:
        for h in hooks:
            h.remove()
    if criterion == "activation":
        for n, w in weights.items():
            shape = [1, -1] + [1] * (w.dim() - 2)
            out[n] = w * acts[n].reshape(shape)
    return out


def _grad_of(module: nn.Module) -> torch.Tensor | None:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original.grad
    return module.weight.grad


def prune_unstructured(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    *,
    criterion: str = "magnitude",
    scope: str = "global",
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """Mask the lowest-scoring weights of ``model`` IN PLACE (``sparsity``: a fraction, or a
    per-layer mapping); layers already masked get their mask updated. Returns ``model``."""
    if criterion not in CRITERIA:
        raise ValueError(
            f"unstructured pruning: unknown criterion {criterion!r}; use one of "
            f"{', '.join(CRITERIA)}"
        )
    if scope not in ("global", "layer"):
        raise ValueError(f"unstructured pruning: scope must be global or layer, got {scope!r}")
    names = prunable_weights(model)
    if not names:
        raise ValueError("unstructured pruning: the model has no Linear or conv layer")
    per = sparsity if isinstance(sparsity, Mapping) else dict.fromkeys(names, sparsity)
    for n, s in per.items():
        if n not in names:
            raise ValueError(
                f"unstructured pruning: {n!r} is not a Linear/conv layer; valid names: {names}"
            )
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < 1:
            raise ValueError(
                f"unstructured pruning: sparsity must be a fraction in [0, 1), got {s!r} for {n!r}"
            )
    scores = _scores(model, names, criterion, data)
    if scope == "global" and not isinstance(sparsity, Mapping):
        flat = torch.cat([scores[n].flatten() for n in names])
        k = math.floor(float(sparsity) * flat.numel())
        threshold = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        masks = {n: scores[n] > threshold for n in names}
    else:
        masks = {}
        for n in names:
            s = scores[n].flatten()
            k = math.floor(float(per.get(n, 0.0)) * s.numel())
            keep = torch.ones_like(s, dtype=torch.bool)
            if k > 0:
                keep[s.argsort()[:k]] = False
            masks[n] = keep.reshape(scores[n].shape)
    for n, mask in masks.items():
        module = model.get_submodule(n)
        if parametrize.is_parametrized(module, "weight"):
            param = module.parametrizations.weight[0]
            param.mask.copy_(mask.float() * param.mask)  # a zero stays a zero
        else:
            parametrize.register_parametrization(module, "weight", Masked(mask))
    return model


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, assignment) of 1-D ``values`` into ``k`` clusters; centroids start linearly
    spaced between the min and the max (Han et al. found linear init best).

    Lloyd's iterations on the sorted values: in 1-D each cluster is the run of values between the
    midpoints of neighbouring centroids (a tie goes to the lower centroid), found by binary search,
    and its mean comes from prefix sums, so an iteration costs O(k log n) after one sort, where
    a value x centroid distance matrix takes n * k time and memory (gigabytes for a
    512 x 512 x 3 x 3 conv at 8 bits).
    """
    v = values.detach().double().flatten()
    lo, hi = float(v.min()), float(v.max())
    c = torch.linspace(lo, hi, k, dtype=torch.float64) if k > 1 else v.mean().reshape(1)
    ordered, order = v.sort()
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)])
    edges = torch.tensor([0, len(v)])
    for _ in range(iters):
        c = c.sort().values
        # cluster j: the sorted values in (mid[j - 1], mid[j]]
        ends = torch.searchsorted(ordered, (c[1:] + c[:-1]) / 2, right=True)
        edges = torch.cat([torch.zeros(1, dtype=torch.long), ends, torch.tensor([len(v)])])
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        if torch.allclose(new, c):
            break
        c = new
    assign = torch.empty_like(order)
    assign[order] = torch.repeat_interleave(torch.arange(len(c)), edges[1:] - edges[:-1])
    return c.float(), assign


def share_weights(
    model: nn.Module, bits: int | Mapping[str, int], *, clamp: bool = False
) -> nn.Module:
    """Replace each Linear/conv weight IN PLACE by ``2^bits`` shared values (k-means over its
    non-zero weights; pruned zeros stay zero). Returns ``model``. A layer with fewer non-zero
    weights than ``2^bits`` is an error, or with ``clamp`` gets the bits its weights allow."""
    names = prunable_weights(model)
    per = bits if isinstance(bits, Mapping) else dict.fromkeys(names, bits)
    for n in names:
        b = per.get(n)
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
            raise ValueError(f"weight sharing: bits must be an int in 1..8, got {b!r} for {n!r}")
        module = model.get_submodule(n)
        w = module.weight.detach()
        mask = (w != 0).float()
        nz = w[mask.bool()]
        if nz.numel() < 2 and clamp:  # (almost) fully pruned: its value(s) are the codebook
            module.weight_codebook_bits, module.sparse_weight = 1, True
            continue
        if nz.numel() < 2**b and clamp:
            b = max(1, int(math.log2(nz.numel())))
        if nz.numel() < 2**b:
            raise ValueError(
                f"weight sharing: layer {n!r} has {nz.numel()} non-zero weights, fewer than the "
                f"2^{b} = {2**b} shared values asked; lower bits for it"
            )
        codebook, assign = kmeans_1d(nz, 2**b)
        index = torch.zeros(w.shape, dtype=torch.long)
        index[mask.bool()] = assign
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        parametrize.register_parametrization(module, "weight", Shared(codebook, index, mask))
    return model


def bake(model: nn.Module) -> nn.Module:
    """Write every reparametrized weight (masked, shared, binary...) back as a plain parameter
    (its effective value), IN PLACE; shared layers keep ``weight_codebook_bits`` and masked or
    shared ones are marked ``sparse_weight``."""
    for n in prunable_weights(model):
        module = model.get_submodule(n)
        if parametrize.is_parametrized(module, "weight"):
            p = module.parametrizations.weight[0]
            bits = p.bits if isinstance(p, Shared) else None
            sparse = isinstance(p, Masked | Shared | SurgeryMask)  # not e.g. binary weights
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            if bits is not None:
                module.weight_codebook_bits = bits
            if sparse:
                module.sparse_weight = True
    return model


def to_sparse_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors for ``weights.sparse.safetensors``: each layer marked
    ``sparse_weight`` as CSR (``name.values``, ``name.col``, ``name.row_ptr``, ``name.shape``)
    when that is smaller than dense, every other tensor as it is."""
    sparse = {f"{n}.weight" for n, m in model.named_modules() if getattr(m, "sparse_weight", False)}
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().contiguous()
        if name in sparse and t.dim() >= 2:
            m2 = t.reshape(t.shape[0], -1)
            col_dtype = torch.int16 if m2.shape[1] < 2**15 else torch.int32
            nnz = int((m2 != 0).sum())
            csr_bytes = nnz * (4 + col_dtype.itemsize) + (m2.shape[0] + 1) * 4
            if csr_bytes < t.numel() * 4:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                    csr = m2.to_sparse_csr()
                out[f"{name}.values"] = csr.values().contiguous()
                out[f"{name}.col"] = csr.col_indices().to(col_dtype).contiguous()
                out[f"{name}.row_ptr"] = csr.crow_indices().to(torch.int32).contiguous()
                out[f"{name}.shape"] = torch.tensor(list(t.shape), dtype=torch.int32)
                continue
        out[name] = t
    return out


def from_sparse_state(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """Load what :func:`to_sparse_state` wrote into ``model`` (same architecture)."""
    state: dict[str, torch.Tensor] = {}
    for name in model.state_dict():
        if f"{name}.values" in tensors:
            shape = tuple(int(s) for s in tensors[f"{name}.shape"])
            rows = shape[0]
            csr = torch.sparse_csr_tensor(
                tensors[f"{name}.row_ptr"].long(),
                tensors[f"{name}.col"].long(),
                tensors[f"{name}.values"],
                size=(rows, math.prod(shape[1:])),
                check_invariants=True,  # a corrupt file raises instead of reading wrong memory
            )
            state[name] = csr.to_dense().reshape(shape)
        else:
            state[name] = tensors[name]
    model.load_state_dict(state)
    return model


class StraightThrough(torch.autograd.Function):
    """Forward: exactly ``value``; backward: the gradient goes to ``w`` unchanged."""

    @staticmethod
    def forward(ctx: object, w: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class SurgeryMask(nn.Module):
    """Dynamic network surgery (Guo et al. 2016): the forward uses ``w * mask`` but the gradient
    reaches every weight as if unmasked (straight through), so a pruned weight keeps learning and
    can be spliced back when it grows."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(w, (w * self.mask).detach())


def surgery_step(model: nn.Module, sparsity: float, band: float = 0.1) -> None:
    """Update every layer's surgery mask IN PLACE: with ``t`` the global ``sparsity``-quantile of
    ``|w|``, weights below ``(1 - band) t`` are pruned, above ``(1 + band) t`` spliced back, the
    others keep their state (the hysteresis keeps masks from flickering). Layers get a
    :class:`SurgeryMask` on the first call."""
    names = prunable_weights(model)
    originals = {}
    for n in names:
        m = model.get_submodule(n)
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(
                m, "weight", SurgeryMask(torch.ones_like(m.weight))
            )
        originals[n] = m.parametrizations.weight.original.detach().abs()
    flat = torch.cat([w.flatten() for w in originals.values()])
    k = math.floor(sparsity * flat.numel())
    if k == 0:
        return
    t = float(flat.kthvalue(k).values)
    for n, w in originals.items():
        mask = model.get_submodule(n).parametrizations.weight[0].mask
        mask[w < (1 - band) * t] = 0.0
        mask[w > (1 + band) * t] = 1.0


def harden(model: nn.Module) -> nn.Module:
    """Turn surgery masks into plain masks (pruned weights zero, no more gradient), IN PLACE."""
    for n in prunable_weights(model):
        m = model.get_submodule(n)
        if parametrize.is_parametrized(m, "weight") and isinstance(
            m.parametrizations.weight[0], SurgeryMask
        ):
            mask = m.parametrizations.weight[0].mask.clone()
            with torch.no_grad():
                m.parametrizations.weight.original.mul_(mask)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            parametrize.register_parametrization(m, "weight", Masked(mask))
    return model


def to_shared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``weights.shared.safetensors``: each shared layer (``weight_codebook_bits``)
    as its float32 codebook (``name.codebook``), its indices packed at the codebook's bit width
    (``name.index``, uint8 bytes) and its shape; every other tensor as it is."""
    from nas.compress.quant_ops import _pack_bits

    shared = {
        f"{n}.weight": int(m.weight_codebook_bits)
        for n, m in model.named_modules()
        if getattr(m, "weight_codebook_bits", None) is not None
    }
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().contiguous()
        if name in shared:
            codebook = torch.unique(t)
            bits = max(1, math.ceil(math.log2(max(len(codebook), 2))))
            index = torch.searchsorted(codebook, t.flatten()).numpy()
            out[f"{name}.codebook"] = codebook.float()
            out[f"{name}.index"] = torch.from_numpy(_pack_bits(index, bits))
            out[f"{name}.shape"] = torch.tensor(list(t.shape), dtype=torch.int32)
            continue
        out[name] = t
    return out


def from_shared_state(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """Load what :func:`to_shared_state` wrote into ``model`` (same architecture)."""
    from nas.compress.quant_ops import _unpack_bits

    state: dict[str, torch.Tensor] = {}
    for name in model.state_dict():
        if f"{name}.codebook" in tensors:
            codebook = tensors[f"{name}.codebook"]
            shape = tuple(int(s) for s in tensors[f"{name}.shape"])
            bits = max(1, math.ceil(math.log2(max(len(codebook), 2))))
            index = _unpack_bits(tensors[f"{name}.index"].numpy(), bits, math.prod(shape))
            state[name] = codebook[torch.from_numpy(index)].reshape(shape)
        else:
            state[name] = tensors[name]
    model.load_state_dict(state)
    return model
