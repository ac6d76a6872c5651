"""``size_bytes``: bytes of the parameters as they are stored.

A module may declare ``weight_bits`` (e.g. set by a quantization technique); parameters of modules
without it are fp32 (32 bits). Shared tensors are counted once. A layer marked ``sparse_weight``
(unstructured pruning) counts its weight as CSR (values, 16- or 32-bit column indices, row
pointers) when that is smaller than dense; ``weight_codebook_bits`` (weight sharing) stores each
value as an index of that many bits plus a float32 codebook. A model that carries
``nas_encoded_bytes`` (Deep Compression) is the size of its encoded file.
"""

from __future__ import annotations

import math

from torch import nn

from objectives.base import MeasureContext, Objective


def model_size_bytes(model: nn.Module) -> int:
    encoded = getattr(model, "nas_encoded_bytes", None)
    if encoded is not None:
        return int(encoded)
    seen: set[int] = set()
    bits = 0
    for module in model.modules():
        width = int(getattr(module, "weight_bits", 32))
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                bits += _weight_bits(module, p, width) if name == "weight" else p.numel() * width
    return math.ceil(bits / 8)


def _weight_bits(module: nn.Module, p: nn.Parameter, width: int) -> int:
    code = getattr(module, "weight_codebook_bits", None)
    value = width if code is None else int(code)
    table = 0 if code is None else (2**value) * 32
    dense = p.numel() * value + table
    if not getattr(module, "sparse_weight", False) or p.dim() < 2:
        return dense
    nnz, rows, cols = int((p != 0).sum()), p.shape[0], p[0].numel()
    csr = nnz * (value + (16 if cols < 2**16 else 32)) + (rows + 1) * 32 + table
    return min(dense, csr)


class SizeBytes(Objective):
    name = "size_bytes"
    direction = "minimize"
    needs_training = False
    unit = "B"
    description = "bytes of the parameters at their stored bit width (fp32 unless quantized)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(model_size_bytes(model))
