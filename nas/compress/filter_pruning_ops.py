"""Structured (filter) pruning: remove whole filters / neurons ranked by an importance criterion.

The channels that must go together come from Torch-Pruning's dependency graph
(:mod:`nas.compress.channel_groups`, shared with network slimming): a conv's filters are removed
with the matching BN entries, the depthwise filters they feed, the input channels of every layer
that reads them (through concats and flattens at their offsets) and, across a residual add or a
squeeze-excite product, with every other layer tied to the same channels. On a ViT that is the
MLP hidden width and the embedding width (the attention heads are ``head_pruning``'s). What the
analysis does not understand (an unknown op, the model's input and output) is *kept*, never
pruned wrongly.

Criteria (score of one output channel ``c`` of a producing layer with weight ``W``):

- ``l1``: ``sum |W[c]|`` (Li et al. 2017, "Pruning Filters for Efficient ConvNets");
- ``l2``: ``||W[c]||_2``;
- ``fpgm``: ``sum_j ||W[c] - W[j]||_2``, the distance to the layer's other filters; the filters
  nearest the geometric median are the most replaceable (He et al. 2019, FPGM);
- ``taylor``: ``(sum_k W[c]_k dL/dW[c]_k)^2`` accumulated over batches of training data, the
  first-order estimate of the loss change when the filter is removed (Molchanov et al. 2019);
- ``energy``: energy-aware pruning (Yang et al. 2017): the ``l1`` score divided by the share of
  the inference energy its layers use (``objectives/energy_uj.py``), so a global ranking removes
  filters from the layers that cost the most energy first.

Each layer's scores are divided by their mean, so that layers of different scales rank together;
a group with several producers (a residual stage) averages its producers' scores. Removal is
global (one ranking over every prunable channel, ``ratio`` of them removed) or per layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.compress._batches import over_batches
from nas.compress.channel_groups import Analysis, Group, analyse, pruned_copy, select_channels

CRITERIA = ("l1", "l2", "fpgm", "taylor", "energy")

__all__ = ["CRITERIA", "channel_scores", "no_prunable_channels", "prunable_layers", "prune_filters"]


def prunable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """One name per prunable channel group: its first producing conv / Linear (graph order)."""
    return [g.producers[0] for g in analyse(model, input_shape).groups]


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.detach().float().reshape(w.shape[0], -1)


def _layer_scores(
    w: torch.Tensor, criterion: str, grad: torch.Tensor | None = None
) -> torch.Tensor:
    if criterion == "l1":
        s = _flat(w).abs().sum(1)
    elif criterion == "l2":
        s = _flat(w).norm(dim=1)
    elif criterion == "fpgm":
        f = _flat(w)
        s = torch.cdist(f, f).sum(1)
    else:  # taylor: the squared first-order term, accumulated by the caller
        assert grad is not None
        s = grad
    return s / s.mean().clamp_min(1e-12)


def taylor_terms(
    model: nn.Module, layers: list[str], data: tuple[torch.Tensor, torch.Tensor], batch: int = 64
) -> dict[str, torch.Tensor]:
    """Per layer and output channel: sum over batches of ``(sum W * dL/dW)^2`` (cross-entropy)."""
    work = {n: model.get_submodule(n) for n in layers}
    acc = {n: torch.zeros(m.weight.shape[0]) for n, m in work.items()}

    def add() -> None:
        for n, m in work.items():
            if m.weight.grad is not None:
                acc[n] += _flat(m.weight * m.weight.grad).sum(1).pow(2)

    over_batches(model, data, add, backward=True, batch=batch)
    return acc


def channel_scores(
    model: nn.Module,
    criterion: str,
    input_shape: tuple[int, ...],
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[list[float]]:
    """Per prunable group (``prunable_layers`` order): a score per channel; low goes first."""
    return _scores(analyse(model, input_shape), criterion, input_shape, data)


def _scores(
    analysis: Analysis,
    criterion: str,
    input_shape: tuple[int, ...],
    data: tuple[torch.Tensor, torch.Tensor] | None,
) -> list[list[float]]:
    if criterion not in CRITERIA:
        raise ValueError(
            f"filter pruning: unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}"
        )
    model, groups = analysis.model, analysis.groups
    grads: dict[str, torch.Tensor] = {}
    if criterion == "taylor":
        if data is None or len(data[0]) == 0:
            raise ValueError(
                "filter pruning: the taylor criterion needs labelled training examples "
                "(calibration data); none were given"
            )
        grads = taylor_terms(model, [n for g in groups for n in g.producers], data)
    share = [1.0] * len(groups)
    if criterion == "energy":
        from objectives.energy_uj import layer_energy

        energy = {
            n: sum(v for k, v in e.items() if k != "macs")
            for n, e in layer_energy(model, input_shape).items()
        }
        per_group = [sum(energy.get(n, 0.0) for n in g.producers) for g in groups]
        mean = sum(per_group) / len(per_group) or 1.0
        share = [max(e / mean, 1e-6) for e in per_group]
    out = []
    for g, s in zip(groups, share, strict=True):
        per = [_producer_scores(model, g, n, criterion, grads.get(n)) for n in g.producers]
        out.append((torch.stack(per).mean(0) / s).tolist())
    return out


def _producer_scores(
    model: nn.Module, g: Group, name: str, criterion: str, grad: torch.Tensor | None
) -> torch.Tensor:
    """One producer's score of each group channel (its filter for that channel)."""
    w = model.get_submodule(name).weight
    s = _layer_scores(w, "l1" if criterion == "energy" else criterion, grad)
    return s[torch.tensor(g.index[name])]


def prune_filters(
    model: nn.Module,
    ratio: float,
    input_shape: tuple[int, ...],
    *,
    criterion: str = "l1",
    per_layer: Mapping[str, float] | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
) -> nn.Module:
    """Return a NEW, physically smaller model with ``ratio`` of its prunable channels removed.

    Args:
        ratio: fraction of all prunable channels removed by one global ranking (ignored with
            ``per_layer``).
        criterion: ``l1``, ``l2``, ``fpgm`` or ``taylor`` (needs ``data``: inputs, labels).
        per_layer: producing layer name (``prunable_layers``) -> fraction of its group removed.
        min_channels: channels every group keeps at least.
        round_to: kept channel counts rounded up to a multiple of this.

    ``ValueError`` when nothing can be pruned, or for arguments out of range.
    """

    def choose(analysis: Analysis) -> list[list[int]]:
        groups = analysis.groups
        if not groups:
            raise ValueError(no_prunable_channels(analysis))
        return select_channels(
            groups,
            _scores(analysis, criterion, input_shape, data),
            ratio=ratio,
            per_layer=per_layer,
            names=[g.producers for g in groups],
            min_channels=min_channels,
            round_to=round_to,
            who="filter pruning",
        )

    return pruned_copy(model, input_shape, choose)


def no_prunable_channels(analysis: Analysis) -> str:
    """One line: why no channel of the analysed model can be pruned."""
    reasons = [g.pinned_by for g in analysis.pinned if g.pinned_by]
    # an op or a layer says more than the model output every network has
    why = next((r for r in reasons if r != "the model's output"), reasons[0] if reasons else None)
    return (
        f"filter pruning: {type(analysis.model).__name__} has no prunable channels: every "
        f"conv / Linear output is tied to {why or 'the model output'}; write the model with "
        "standard layers (convs, norms, activations, pooling, +, *, concat) or drop "
        "filter_pruning for this space"
    )
