"""``quantize``: quantization-aware training at a searched weight bit width.

Weights are fake-quantized (symmetric, per output channel) at ``bits`` (2-8; ``per_layer: true``
samples one width per layer: mixed precision) and activations at 8 bits during the fine-tune that
follows the structural techniques; ``size_bytes`` counts the chosen bits.
Exports: at 8 bits a real int8 model (conv+BN folded, onnxruntime static quantization, QDQ,
calibrated on training data) whose accuracy and latency are measured in onnxruntime; below 8 bits
the weights are stored packed at their width and inference dequantizes them (simulated compute).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Knob, Technique
from nas.compress.quant_ops import prepare_qat, quantizable_layers

# the int8 export's first conv: its int8 kernel is several times slower than fp32 in onnxruntime
STEM_KNOB = Knob(
    "stem",
    "choice",
    (0.0, 0.0),
    ("float",),
    help="int8 export: keep the input conv (< 4 input channels) float (default) or int8 too",
    options=("float", "int8"),
)


class Quantize(Technique):
    name = "quantize"
    description = "QAT with per-channel fake-quant weights (2-8 bits); real int8 export at 8 bits"
    knobs = (
        Knob(
            "bits",
            "int",
            (2, 8),
            (4, 8),
            help="weight bit width",
            outside="to search float32 (no quantization) as well, add `optional: true`",
        ),
        STEM_KNOB,
    )
    no_eligible_layer = "no Conv/Linear layer to quantize"
    per_layer_knob = "bits"
    exports = "int8 ONNX (QDQ, onnxruntime) at 8 bits; packed weights below 8 bits (simulated)"
    min_finetune = 0.25  # QAT observes activation ranges and adapts weights while fine-tuning

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return quantizable_layers(model)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        bits = knobs["bits"]
        return prepare_qat(
            model, dict(bits) if isinstance(bits, Mapping) else int(bits), act_bits=8
        )


def is_int8(knobs: Mapping[str, Any]) -> bool:
    """Whether every quantized layer is at 8 bits: the model is exported as real int8."""
    bits = knobs["bits"]
    return all(int(b) == 8 for b in bits.values()) if isinstance(bits, Mapping) else int(bits) == 8
