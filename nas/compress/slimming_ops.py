"""Network slimming (Liu et al. 2017): BN-gamma L1 in training, then low-|gamma| channels removed.

The channels that go together come from :mod:`nas.compress.channel_groups` (Torch-Pruning's
dependency graph): a group is slimmable when it is prunable and holds an affine BatchNorm.

A channel's score is how strongly the network sees it. Along one chain (a conv, its BN, an
activation, a depthwise conv and its BN) BNs act in series and either can silence the channel, so
the chain scores the **min** |gamma| of its BNs; chains added together (a residual stage: the
stem's and every block's project BN) each carry the channel, so it scores the **max** over
chains. For a plain conv -> BN -> conv this is just |gamma|. A squeeze-excite gate (no BN) leaves
the score as it is.

``slim`` ranks the channels of all slimmable groups together (one entry per group channel) and
removes the ``floor(ratio * n)`` lowest -- the paper's global ``ratio``-quantile threshold --
keeping at least ``min_channels`` per group (its highest-scoring ones). Equal scores (e.g. an
untrained model, every gamma 1) are broken so that each group loses about the same fraction. The
beta of a removed channel is dropped, not folded into the next layer, so removal is exact where
the channel's output is exactly 0 (gamma = beta = 0, or a depthwise BN that maps 0 to 0 after it).
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Mapping

import torch
from torch import nn

from nas.compress.channel_groups import (
    Analysis,
    Group,
    analyse,
    check_fraction,
    check_input_shape,
    pruned_copy,
    select_channels,
)

__all__ = ["bn_l1_penalty", "slim", "slimmable_bns", "slimming_groups"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BN) for m in model.modules())


def _slimmable(analysis: Analysis) -> list[Group]:
    return [g for g in analysis.groups if g.bns]


def slimming_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[list[str]]:
    """The slimmable BatchNorms grouped by tied channels (one list per group, graph order).

    BNs in one list share their channel indices (a residual stage, an expand conv's BN with the
    depthwise conv's BN) and are always pruned together. ``[]`` for a model without BatchNorm.
    """
    if not _has_bn(model):
        return []
    return [list(g.bns) for g in _slimmable(analyse(model, input_shape))]


def slimmable_bns(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the BatchNorm layers whose channels slimming can remove (graph order).

    ``[]`` for a model without BatchNorm (e.g. the ``mlp`` space); ``ValueError`` when one
    forward pass of ``input_shape`` cannot be traced.
    """
    return [name for group in slimming_groups(model, input_shape) for name in group]


# bn_l1_penalty runs every training step: remember the analysis per model object while its
# module tree (identities and weight shapes) stays the same.
_PENALTY_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[str]]] = (
    weakref.WeakKeyDictionary()
)


def _fingerprint(model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    def shape(m: nn.Module) -> tuple[int, ...] | None:
        w = getattr(m, "weight", None)
        return tuple(w.shape) if isinstance(w, torch.Tensor) else None

    return (tuple(input_shape), *((n, id(m), shape(m)) for n, m in model.named_modules()))


def bn_l1_penalty(model: nn.Module, strength: float, input_shape: tuple[int, ...]) -> torch.Tensor:
    """strength * sum |gamma| over the slimmable BNs (the training regulariser).

    Add it to the training loss; its gradient ``strength * sign(gamma)`` drives unimportant
    channels' gammas to zero. A model without slimmable BNs gives a zero tensor.
    """
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or strength < 0:
        raise ValueError(
            f"bn_l1_penalty: strength must be a number >= 0, got strength={strength!r}; "
            "pass e.g. 1e-4"
        )
    key = _fingerprint(model, input_shape)
    cached = _PENALTY_CACHE.get(model)
    if cached is None or cached[0] != key:
        cached = (key, slimmable_bns(model, input_shape))
        _PENALTY_CACHE[model] = cached
    gammas = [model.get_submodule(n).weight for n in cached[1]]
    if not gammas:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return float(strength) * torch.stack([g.abs().sum() for g in gammas]).sum()


def _scores(analysis: Analysis, g: Group) -> list[float]:
    """Per channel: max over the group's chains of the min |gamma| along the chain."""
    model = analysis.model

    def gamma(bn: str) -> torch.Tensor:
        w = model.get_submodule(bn).weight.detach().abs().float().cpu()
        return w[torch.tensor(g.index[bn])]

    chains = {bn: [b for b in analysis.chain(bn) if b in g.index] for bn in g.bns}
    inner = {b for bn, chain in chains.items() for b in chain if b != bn}
    per_chain = [
        torch.stack([gamma(b) for b in chain]).amin(0)
        for bn, chain in chains.items()
        if bn not in inner
    ]
    return torch.stack(per_chain).amax(0).tolist()


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

    Raises ``ValueError`` for a model without BatchNorm, without a slimmable BN, or that cannot
    be traced, and for out-of-range arguments.
    """
    input_shape = check_input_shape(input_shape, "slim")
    ratio = check_fraction("ratio", ratio)
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(
            f"slim: min_channels must be an int >= 1, got min_channels={min_channels!r}; "
            "pass e.g. 1"
        )
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(
            f"slim: round_to must be an int >= 1, got round_to={round_to!r}; pass e.g. 4"
        )
    if not _has_bn(model):
        raise ValueError(
            f"slim: {type(model).__name__} has no BatchNorm layers; network slimming needs them "
            "(it prunes by BN scaling factors): use a space with batch_norm, or structured "
            "pruning instead"
        )

    def choose(analysis: Analysis) -> list[list[int]]:
        groups = _slimmable(analysis)
        if not groups:
            pinned = next((g.pinned_by for g in analysis.pinned if g.bns), None)
            raise ValueError(
                f"slim: {type(model).__name__} has BatchNorm layers but none can be slimmed: "
                f"each is tied to {pinned or 'a layer whose channels cannot shrink'}; nothing "
                "to prune: use structured pruning instead"
            )
        scores = [
            [1.0 - c / g.size for c in range(g.size)] if by_position else _scores(analysis, g)
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
        # only slimmable groups are pruned; the others keep every channel
        full = {id(g): k for g, k in zip(groups, keep, strict=True)}
        return [full.get(id(g), list(range(g.size))) for g in analysis.groups]

    return pruned_copy(model, input_shape, choose)
