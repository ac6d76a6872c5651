"""Compression techniques, registered by name; ``nas techniques`` lists them with their knobs.

The pipeline applies them in ``ORDER`` (structure first, then quantization for the fine-tune):
train (with every technique's loss hooks) -> slimming -> filter pruning -> lowrank -> tucker ->
cp -> quantize (QAT) -> fine-tune.
To add one, subclass :class:`Technique` (``nas/compress/lowrank.py`` is a compact example) and
register an instance in ``TECHNIQUES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Criterion, Knob, KnobRange, LossHook, Settings, Technique
from nas.errors import NasError
from nas.registry import Registry

TECHNIQUES: Registry[Technique] = Registry("technique")
ORDER = (
    "distill",
    "slimming",
    "filter_pruning",
    "head_pruning",
    "lowrank",
    "tucker",
    "cp",
    "unstructured",
    "dns",
    "weight_sharing",
    "deep_compression",
    "binarize",
    "quantize",
    "ptq",
    "dfq",
)
_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        from nas.compress.binary import Binarize
        from nas.compress.decompose import CP, Tucker
        from nas.compress.distill import Distill
        from nas.compress.filter_pruning import FilterPruning
        from nas.compress.head_pruning import HeadPruning
        from nas.compress.lowrank import LowRank
        from nas.compress.ptq import DFQ, PTQ
        from nas.compress.quantize import Quantize
        from nas.compress.slimming import Slimming
        from nas.compress.unstructured import (
            DeepCompression,
            DynamicSurgery,
            Unstructured,
            WeightSharing,
        )

        for tech in (
            Distill(),
            Slimming(),
            FilterPruning(),
            HeadPruning(),
            LowRank(),
            Tucker(),
            CP(),
            Unstructured(),
            DynamicSurgery(),
            WeightSharing(),
            DeepCompression(),
            Binarize(),
            Quantize(),
            PTQ(),
            DFQ(),
        ):
            TECHNIQUES.register(tech.name, tech)
        _loaded = True


def list_techniques() -> list[Technique]:
    _load()
    order = {n: i for i, n in enumerate(ORDER)}
    return sorted((TECHNIQUES.get(n) for n in TECHNIQUES), key=lambda t: order.get(t.name, 99))


def get(name: str) -> Technique:
    _load()
    return TECHNIQUES.get(name)


def parse_compression(raw: Mapping[str, Any] | None) -> list[tuple[Technique, Settings]]:
    """The experiment's ``compression:`` entries, validated, in application order."""
    out = []
    for name, entry in (raw or {}).items():
        if entry is not None and not isinstance(entry, Mapping):
            raise NasError(
                f"compression.{name} must be a mapping of knob ranges, e.g. "
                f"{{ratio: [0.0, 0.7]}}, got {entry!r}"
            )
        tech = get(name)
        out.append((tech, tech.parse(entry)))
    if not out:
        return []
    order = {t.name: i for i, t in enumerate(list_techniques())}
    return sorted(out, key=lambda ts: order[ts[0].name])


__all__ = [
    "ORDER",
    "TECHNIQUES",
    "Context",
    "Criterion",
    "Knob",
    "KnobRange",
    "LossHook",
    "Settings",
    "Technique",
    "as_deployed",
    "get",
    "list_techniques",
    "parse_compression",
]


def as_deployed(model: nn.Module, compression: Mapping[str, Any]) -> nn.Module:
    """The float model that is exported: fake-quant removed (weights at their quantized values,
    ``weight_bits`` kept for ``size_bytes``). Metrics are measured on this, never on QAT wrappers.
    """
    if "quantize" not in compression:
        return model
    from nas.compress.quant_ops import strip_qat

    return strip_qat(model)
