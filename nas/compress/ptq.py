"""``ptq`` and ``dfq``: post-training int8 quantization, with or without calibration data.

- ``ptq``: the trained float model exported as real int8 (onnxruntime static quantization, QDQ,
  per-channel weights) with activation ranges calibrated on training examples by ``calibration``
  ``minmax`` or ``percentile`` (99.99th, robust to outliers). No training involved.
- ``dfq``: data-free quantization (Nagel et al. 2019, :mod:`nas.compress.dfq_ops`): cross-layer
  equalization and bias correction from BatchNorm statistics, then int8 with no data at all
  (onnxruntime dynamic quantization: per-tensor weights, activation ranges at run time).

Both are post-training: put no ``finetune`` on them (training after DFQ would undo its
corrections). Exports: ``model.int8.onnx``, real int8 kernels, measured in onnxruntime.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.compress._base import Context, Knob, Technique
from nas.compress.dfq_ops import dfq
from nas.compress.quant_ops import quantizable_layers
from nas.compress.quantize import STEM_KNOB


def _mark_int8(model: nn.Module) -> nn.Module:
    for name in quantizable_layers(model):
        model.get_submodule(name).weight_bits = 8
    return model


class PTQ(Technique):
    name = "ptq"
    description = "post-training int8 (onnxruntime static, calibrated on training data)"
    knobs = (
        Knob(
            "calibration",
            "choice",
            (0.0, 0.0),
            ("minmax",),
            options=("minmax", "percentile"),
            help="activation ranges: min/max or the 99.99th percentile of calibration data",
        ),
        STEM_KNOB,
    )
    no_eligible_layer = "no Conv/Linear layer to quantize"
    exports = "model.int8.onnx (real int8, calibrated on training examples)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return quantizable_layers(model)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return _mark_int8(copy.deepcopy(model))


class DFQ(Technique):
    name = "dfq"
    description = "data-free int8: cross-layer equalization + bias correction, no data used"
    knobs = ()
    no_eligible_layer = "no Conv/Linear layer to quantize"
    exports = "model.int8.onnx (real int8, dynamic quantization: no calibration data)"

    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        return quantizable_layers(model)

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return _mark_int8(dfq(model))

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return _mark_int8(copy.deepcopy(model))
