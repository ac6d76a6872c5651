"""``unstructured``, ``weight_sharing`` and ``deep_compression``: the sparse and shared family.

- ``unstructured``: single weights zeroed by ``criterion`` (magnitude, gradient, activation) to a
  ``sparsity`` (global ranking, or per layer with ``per_layer: true``), ``schedule`` oneshot
  (after training) or gradual (raised along training, Zhu & Gupta 2017); the fine-tune keeps the
  zeros. Exports: the model with its zeros, and CSR-stored layers where that is smaller
  (``size_bytes`` counts the stored format).
- ``dns``: dynamic network surgery (Guo et al. 2016), masks updated along training with pruning
  and splicing thresholds around the sparsity quantile; masked weights still learn (straight
  through) and come back when they grow.
- ``weight_sharing``: each layer's weights clustered into ``2^bits`` shared values (k-means), the
  centroids fine-tuned with gradient sharing. Exports: indices + codebook (size in bits).
- ``deep_compression`` (Han et al. 2016): gradual magnitude pruning during training (one global
  threshold over the layers, where the paper tunes one per layer: small layers such as the
  classifier keep more of their weights), then k-means sharing of the survivors, centroid
  fine-tune, and Huffman coding of positions and indices into ``model.dc``
  (:mod:`nas.compress.dc_format`), whose real size is the ``size_bytes``.

The compute of these models is dense in onnxruntime (zeros are multiplied): their gain is size,
not speed. See :mod:`nas.compress.sparse_ops`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nas.compress._base import Context, Knob, Technique, criterion_knob, fraction_knob
from nas.compress.sparse_ops import (
    CRITERIA,
    bake,
    harden,
    prunable_weights,
    prune_unstructured,
    share_weights,
    surgery_step,
)

GRADUAL_START, GRADUAL_END, GRADUAL_UPDATES = 0.2, 0.7, 10  # fractions of training; mask updates


def gradual_hook(
    model: nn.Module, sparsity: float | Mapping[str, float], **prune_kw: Any
) -> Callable[[int, int], None]:
    """Raise the sparsity as ``s (1 - (1 - u)^3)`` at ``GRADUAL_UPDATES`` evenly spaced steps
    between ``GRADUAL_START`` and ``GRADUAL_END`` of training (Zhu & Gupta 2017)."""
    done: set[int] = set()

    def hook(step: int, steps: int) -> None:
        first, last = GRADUAL_START * steps, GRADUAL_END * steps
        for k in range(1, GRADUAL_UPDATES + 1):
            at = round(first + (last - first) * k / GRADUAL_UPDATES)
            if step >= at and k not in done:
                done.add(k)
                u = k / GRADUAL_UPDATES
                factor = 1 - (1 - u) ** 3
                now = (
                    {n: s * factor for n, s in sparsity.items()}
                    if isinstance(sparsity, Mapping)
                    else sparsity * factor
                )
                prune_unstructured(model, now, **prune_kw)

    return hook


def _data(ctx: Context) -> tuple | None:
    return None if ctx.calib_x is None or ctx.calib_y is None else (ctx.calib_x, ctx.calib_y)


class Unstructured(Technique):
    name = "unstructured"
    description = "single weights zeroed (magnitude / gradient / activation), oneshot or gradual"
    knobs = (
        fraction_knob("sparsity", "fraction of Linear/conv weights zeroed", (0.0, 0.9)),
        criterion_knob(CRITERIA, "magnitude |w|, gradient |w dL/dw|, activation |w| mean|x|"),
        Knob(
            "schedule",
            "choice",
            (0.0, 0.0),
            ("oneshot",),
            options=("oneshot", "gradual", "rewind"),
            help="oneshot after training, gradual along it (Zhu & Gupta), or rewind (lottery "
            "ticket: the survivors reset to their values early in training, then retrained)",
        ),
        Knob(
            "l1",
            "float",
            (0.0, 1.0),
            (0.0, 0.0),
            help="L1 penalty on the weights during training (drives them to zero); 0: none",
        ),
    )
    per_layer_knob = "sparsity"
    no_eligible_layer = "no Linear or conv layer"
    exports = "the sparse model; CSR-stored layers where smaller (size counts the format)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return prunable_weights(model)

    def _kw(self, knobs: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
        sparsity = knobs["sparsity"]
        scope = "layer" if isinstance(sparsity, Mapping) else "global"
        return {
            "criterion": str(knobs.get("criterion", "magnitude")),
            "scope": scope,
            "data": _data(ctx),
        }

    def loss_hooks(self, knobs: Mapping[str, Any], ctx: Context) -> list:
        strength = float(knobs.get("l1", 0.0))
        return [lambda model: l1_penalty(model, strength)] if strength > 0 else []

    def step_hooks(self, knobs: Mapping[str, Any], model: nn.Module, ctx: Context) -> list:
        if knobs.get("schedule") == "gradual":
            return [gradual_hook(model, knobs["sparsity"], **self._kw(knobs, ctx))]
        if knobs.get("schedule") == "rewind":
            return [rewind_snapshot_hook(model)]
        return []

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        out = prune_unstructured(copy.deepcopy(model), knobs["sparsity"], **self._kw(knobs, ctx))
        if knobs.get("schedule") == "rewind":
            rewind(out)
        return out

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """The sparsity is set by the knobs: magnitude masks on the initial weights give it."""
        pruned = prune_unstructured(
            copy.deepcopy(model), knobs["sparsity"], scope=self._kw(knobs, ctx)["scope"]
        )
        return bake(pruned)


def l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * sum |w|`` over the Linear / conv weights (sparse representations)."""
    return strength * sum(
        model.get_submodule(n).weight.abs().sum() for n in prunable_weights(model)
    )


REWIND_AT = 0.05  # lottery-ticket rewinding point, a fraction of the training steps


def rewind_snapshot_hook(model: nn.Module) -> Callable[[int, int], None]:
    """Keep the weights of ``model`` as they are at ``REWIND_AT`` of training (on the model)."""

    def hook(step: int, steps: int) -> None:
        if "nas_rewind" not in vars(model) and step >= max(1, round(REWIND_AT * steps)):
            model.nas_rewind = {  # type: ignore[assignment]
                n: model.get_submodule(n).weight.detach().clone() for n in prunable_weights(model)
            }

    return hook


def rewind(model: nn.Module) -> nn.Module:
    """Lottery-ticket rewinding (Frankle et al. 2019): the surviving weights of a masked model
    reset to their early-training values, IN PLACE; the fine-tune then retrains the sparse net."""
    from torch.nn.utils import parametrize

    early = vars(model).pop("nas_rewind", None)
    if early is None:
        raise ValueError(
            "unstructured pruning: schedule rewind found no early weights (the model was not "
            "trained with the technique's step hook); use oneshot or gradual"
        )
    for n, w in early.items():
        m = model.get_submodule(n)
        target = m.parametrizations.weight.original if parametrize.is_parametrized(m) else m.weight
        with torch.no_grad():
            target.copy_(w)
    return model


class DynamicSurgery(Technique):
    name = "dns"
    description = "dynamic network surgery: masks pruned and spliced along training"
    knobs = (fraction_knob("sparsity", "fraction of Linear/conv weights masked", (0.5, 0.95)),)
    no_eligible_layer = "no Linear or conv layer"
    exports = "the sparse model; CSR-stored layers where smaller (size counts the format)"
    UPDATE_EVERY = 10  # steps between mask updates

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return prunable_weights(model)

    def step_hooks(self, knobs: Mapping[str, Any], model: nn.Module, ctx: Context) -> list:
        sparsity = float(knobs["sparsity"])

        def hook(step: int, steps: int) -> None:
            start = round(GRADUAL_START * steps)
            if step >= start and (step - start) % self.UPDATE_EVERY == 0:
                # the sparsity rises to its target by GRADUAL_END, then masks keep adapting
                u = min(1.0, (step - start) / max(1, (GRADUAL_END - GRADUAL_START) * steps))
                surgery_step(model, sparsity * (1 - (1 - u) ** 3))

        return [hook]

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        out = harden(copy.deepcopy(model))  # after training: the masks are final
        return prune_unstructured(out, float(knobs["sparsity"]))  # exactly the target

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return bake(prune_unstructured(copy.deepcopy(model), float(knobs["sparsity"])))


class WeightSharing(Technique):
    name = "weight_sharing"
    description = "k-means weight sharing: 2^bits shared values per layer, centroids fine-tuned"
    knobs = (Knob("bits", "int", (1, 8), (3, 6), help="log2 of the shared values per layer"),)
    per_layer_knob = "bits"
    no_eligible_layer = "no Linear or conv layer"
    exports = "indices at `bits` + a float32 codebook per layer (size counted in bits)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return prunable_weights(model)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        bits = knobs["bits"]
        return share_weights(
            copy.deepcopy(model),
            {k: int(v) for k, v in bits.items()} if isinstance(bits, Mapping) else int(bits),
        )

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """The stored size follows from the bits alone: no k-means before training."""
        out, bits = copy.deepcopy(model), knobs["bits"]
        for n in prunable_weights(out):
            b = bits.get(n) if isinstance(bits, Mapping) else bits
            if b is not None:
                out.get_submodule(n).weight_codebook_bits = int(b)
        return out


class DeepCompression(Technique):
    name = "deep_compression"
    description = "prune (gradual) -> k-means share -> Huffman code; size = the model.dc file"
    knobs = (
        fraction_knob("sparsity", "fraction of the weights pruned (global threshold)", (0.8, 0.95)),
        Knob("bits", "int", (1, 8), (4, 6), help="log2 of the shared values per layer"),
    )
    no_eligible_layer = "no Linear or conv layer"
    exports = "model.dc (Huffman-coded sparse shared weights; its size is size_bytes)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return prunable_weights(model)

    def step_hooks(self, knobs: Mapping[str, Any], model: nn.Module, ctx: Context) -> list:
        return [gradual_hook(model, float(knobs["sparsity"]), scope="global")]

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        out = prune_unstructured(copy.deepcopy(model), float(knobs["sparsity"]), scope="global")
        return share_weights(out, int(knobs["bits"]), clamp=True)  # tiny layers: fewer bits

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """Sparse storage at ``bits`` per value: an upper bound of the Huffman-coded file."""
        out = bake(prune_unstructured(copy.deepcopy(model), float(knobs["sparsity"])))
        for n in prunable_weights(out):
            out.get_submodule(n).weight_codebook_bits = int(knobs["bits"])
        return out
