"""``size_bytes``: bytes of the parameters at their stored bit width.

A module may declare ``weight_bits`` (e.g. set by a quantization technique); parameters of modules
without it are fp32 (32 bits). Shared tensors are counted once.
"""

from __future__ import annotations

import math

from torch import nn

from objectives.base import MeasureContext, Objective


def model_size_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    bits = 0
    for module in model.modules():
        width = int(getattr(module, "weight_bits", 32))
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                bits += p.numel() * width
    return math.ceil(bits / 8)


class SizeBytes(Objective):
    name = "size_bytes"
    direction = "minimize"
    needs_training = False
    unit = "B"
    description = "bytes of the parameters at their stored bit width (fp32 unless quantized)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(model_size_bytes(model))
