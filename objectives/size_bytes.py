"""``size_bytes``: bytes of the model's tensors as the export stores them.

Counted per tensor, at the width the deployed files hold it:

- a weight at its layer's ``weight_bits`` (set by a quantization technique; 32 = fp32 otherwise);
  a layer quantized to 1-8 bits also stores one float32 scale per output channel (int8 ONNX,
  ``weights.packed.safetensors`` and the binary/ternary ``alpha`` all do);
- every other parameter (biases included) at 32 bits: int8 export keeps biases int32, packed
  exports float32;
- a BatchNorm that follows a conv or Linear is folded into it by the export: it counts as the
  bias it becomes (4 bytes per channel, none when the layer had a bias already);
- a layer marked ``sparse_weight`` (unstructured pruning) counts its weight as CSR (values, 16-
  or 32-bit column indices, row pointers) when that is smaller than dense;
  ``weight_codebook_bits`` (weight sharing) stores each value as an index of that many bits plus
  a float32 codebook;
- a model that carries ``nas_encoded_bytes`` (Deep Compression) is the size of its encoded file.

Shared tensors count once. Not counted: the few bytes of per-tensor activation ranges an int8
graph adds, and the ONNX file's framing (an export records the file sizes as well).
"""

from __future__ import annotations

import math

from torch import nn

from objectives.base import MeasureContext, Objective

_FP32 = 32


def model_size_bytes(model: nn.Module) -> int:
    encoded = getattr(model, "nas_encoded_bytes", None)
    if encoded is not None:
        return int(encoded)
    from nas.compress.fusion import foldable_pairs

    pairs = dict((bn, layer) for layer, bn in foldable_pairs(model))
    modules = dict(model.named_modules())
    seen: set[int] = set()
    bits = 0
    for name, module in model.named_modules():
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in params)
        if name in pairs:  # folded: the bias it becomes, if its layer has none
            has_bias = getattr(modules[pairs[name]], "bias", None) is not None
            bits += 0 if has_bias else module.num_features * _FP32
            continue
        width = int(getattr(module, "weight_bits", _FP32))
        for pname, p in params:
            bits += _weight_bits(module, p, width) if pname == "weight" else p.numel() * _FP32
        if width < _FP32 and getattr(module, "weight_codebook_bits", None) is None:
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() > 0:
                bits += weight.shape[0] * _FP32  # one float32 scale per output channel
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
    description = (
        "bytes of the tensors as the export stores them (weights at their bit width + per-channel "
        "scales, biases 32-bit, BatchNorm folded)"
    )

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(model_size_bytes(model))
