"""Objectives (metrics), registered by name; ``nas objectives`` lists them.

To add one, subclass :class:`objectives.base.Objective` (``objectives/params.py`` is the smallest
example) and register an instance with ``OBJECTIVES.register(obj.name, obj)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.registry import Registry
from objectives.accuracy import Accuracy
from objectives.base import MeasureContext, Objective
from objectives.energy_uj import EnergyUj, energy_uj
from objectives.flops import Flops, count_flops
from objectives.latency_ms import LatencyMs
from objectives.params import Params, count_params
from objectives.size_bytes import SizeBytes, model_size_bytes

OBJECTIVES: Registry[Objective] = Registry("objective")
for _obj in (Accuracy(), Flops(), Params(), SizeBytes(), LatencyMs(), EnergyUj()):
    OBJECTIVES.register(_obj.name, _obj)

if TYPE_CHECKING:
    from nas.config import Experiment


def directions(exp: Experiment) -> dict[str, str]:
    """Each objective of an experiment and its direction (given, or the objective's own)."""
    return {
        n: (spec.direction or OBJECTIVES.get(n).direction) for n, spec in exp.objectives.items()
    }


__all__ = [
    "OBJECTIVES",
    "MeasureContext",
    "Objective",
    "count_flops",
    "count_params",
    "directions",
    "energy_uj",
    "model_size_bytes",
]
