"""Quantization: fake-quant training with per-layer bit widths, packed storage, real int8 export.

Three parts, used in this order by a trial and its export:

* **QAT (simulated).** :func:`prepare_qat` returns a copy whose Conv/Linear layers fake-quantize
  their weights in every forward pass (training and eval): symmetric, per output channel,
  ``scale = max|w| / (2**(b-1) - 1)``, codes in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (at most
  ``2**b - 1`` values), rounding with a straight-through estimator so the float weights keep
  training. With ``act_bits`` each quantized layer also fake-quantizes its *input* (affine,
  unsigned, range from an exponential moving average of the batch min/max seen in training) —
  the same place onnxruntime puts a QuantizeLinear in the int8 export. Each quantized layer has
  ``weight_bits = b``, which the ``size_bytes`` objective reads. Compute with fewer than 8 bits
  is SIMULATED: the weights are dequantized to float32 and the arithmetic is float; only the
  storage (:func:`pack_weights`) is really ``b`` bits per weight.
* **Storage.** :func:`pack_weights` stores each layer with ``weight_bits <= 8`` as its integer
  codes packed at exactly ``b`` bits (4 bits: two codes per byte) plus float32 per-channel scales
  and its float32 bias; :func:`unpack_weights` restores the dequantized weights bit for bit.
* **Real int8** (:mod:`nas.compress.int8_export`). ``export_int8`` folds BatchNorm, exports
  fp32 ONNX and runs onnxruntime's static quantization (QDQ format, per-channel symmetric int8
  weights, uint8 activations, min/max calibration). onnxruntime fuses the QDQ pairs into integer
  kernels (QLinearConv, QGemm, QLinearAdd, ...) when it loads the model.

Why these settings (onnxruntime 1.32, x86 CPU with VNNI, one thread): uint8 activations, because
with int8 ones onnxruntime does not fuse QLinearAdd/QLinearMul on x86 and residual adds fall
back to float (much slower MobileNets); per-channel weights and ``reduce_range`` cost no
measurable speed; onnxruntime's pre-processing optimisation brings nothing (only its shape
inference runs). A conv with fewer than 4 input channels (the input layer) misses MLAS's
symmetric int8 conv kernel and is several times slower in int8 than in fp32, so it stays fp32
(see ``int8_export``). Plain conv nets gain most; small MobileNets (depthwise convs, narrow
projections) gain little or nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ActFakeQuant",
    "FakeQuantWeight",
    "QATConv1d",
    "QATConv2d",
    "QATConv3d",
    "QATLinear",
    "fake_quant_weight",
    "pack_weights",
    "packed_size_bytes",
    "prepare_qat",
    "quantizable_layers",
    "strip_qat",
    "unpack_weights",
    "weight_scale",
]

MIN_BITS, MAX_BITS = 2, 8
_MIN_SCALE = 1e-12  # an all-zero channel gets this scale (its codes are all 0)
_EMA_MOMENTUM = 0.1  # weight of the newest batch in the activation range average


# ---------------------------------------------------------------------------------------------
# fake quantization
# ---------------------------------------------------------------------------------------------


def _check_bits(value: object, name: str = "bits") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        hint = (
            "1-bit weights are the binary technique's job; use 2..8 here"
            if value == 1
            else f"pick an int in {MIN_BITS}..{MAX_BITS}"
        )
        raise ValueError(
            f"quantization: {name} must be an int in {MIN_BITS}..{MAX_BITS}, got {name}={value!r}; "
            f"{hint}"
        )
    return value


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scale ``max|w| / (2**(b-1) - 1)`` (float32, no gradient)."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return (amax / _qmax(bits)).clamp_min(_MIN_SCALE).to(torch.float32)


def fake_quant_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` rounded to its per-channel ``bits`` grid; the gradient passes straight through."""
    qmax = _qmax(bits)
    scale = weight_scale(weight, bits)
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


class ActFakeQuant(nn.Module):
    """Affine unsigned fake quantization of a tensor with an EMA of its observed min/max.

    In training every batch updates ``running_min``/``running_max`` (the first batch sets them);
    in eval the stored range is used, except that a never-observed module takes its range from
    the first batch it sees. The range always contains 0, so zero (e.g. ReLU's output) is exact.
    """

    def __init__(self, bits: int = 8, momentum: float = _EMA_MOMENTUM) -> None:
        super().__init__()
        self.bits = _check_bits(bits, "act_bits")
        self.momentum = momentum
        self.register_buffer("running_min", torch.tensor(0.0))
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not bool(self.observed):
            self._observe(x)
        qmax = 2**self.bits - 1
        lo = self.running_min.clamp(max=0.0)
        hi = self.running_max.clamp(min=0.0)
        scale = ((hi - lo) / qmax).clamp_min(_MIN_SCALE).float()
        zero = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, qmax)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().amin().float(), x.detach().amax().float()
        if bool(self.observed):
            lo = torch.lerp(self.running_min, lo, self.momentum)
            hi = torch.lerp(self.running_max, hi, self.momentum)
        self.running_min.copy_(lo)
        self.running_max.copy_(hi)
        self.observed.fill_(True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


class FakeQuantWeight:
    """Mixin of the QAT layers: weight fake-quantized to ``weight_bits``, input optionally too.

    :func:`prepare_qat` turns an ``nn.Conv2d`` into a :class:`QATConv2d` in place of the copy
    (same parameters, same name), so state dicts and layer names do not change.
    """

    weight_bits: int
    act_quant: ActFakeQuant | None
    float_type: type[nn.Module]

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_weight(self.weight, self.weight_bits)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"


class _QATConv(FakeQuantWeight):
    """The forward shared by the QAT convolutions (``_conv_forward`` comes from torch's class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class QATConv1d(_QATConv, nn.Conv1d):
    float_type = nn.Conv1d


class QATConv2d(_QATConv, nn.Conv2d):
    float_type = nn.Conv2d


class QATConv3d(_QATConv, nn.Conv3d):
    float_type = nn.Conv3d


class QATLinear(FakeQuantWeight, nn.Linear):
    float_type = nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)


# exact types only: a subclass may override forward, which the QAT twin would silently drop
_QAT_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QATConv1d,
    nn.Conv2d: QATConv2d,
    nn.Conv3d: QATConv3d,
    nn.Linear: QATLinear,
}


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers :func:`prepare_qat` can quantize (Conv1d/2d/3d and Linear)."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) in _QAT_TYPES or isinstance(m, FakeQuantWeight)
    ]


def prepare_qat(
    model: nn.Module, bits: int | Mapping[str, int], *, act_bits: int | None = 8
) -> nn.Module:
    """A new model whose Conv/Linear layers fake-quantize weights (and inputs) in forward.

    Args:
        bits: one width (2..8) for every quantizable layer, or ``{layer name: bits}``; layers
            left out of the mapping stay float32 with no fake quantization.
        act_bits: width of the fake-quantized input of each quantized layer; ``None`` leaves
            activations float.

    The original model is not changed. Calling it on a QAT model re-sets the widths.
    """
    names = quantizable_layers(model)
    if act_bits is not None:
        act_bits = _check_bits(act_bits, "act_bits")
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(names))
        if unknown:
            raise ValueError(
                f"quantization: bits names layers that are not quantizable: {unknown}; "
                f"use names from quantizable_layers(model): {names}"
            )
        plan = {name: _check_bits(b, f"bits[{name!r}]") for name, b in bits.items()}
    else:
        plan = dict.fromkeys(names, _check_bits(bits))

    qat = copy.deepcopy(model)
    for name, b in plan.items():
        layer = qat.get_submodule(name)
        if not isinstance(layer, FakeQuantWeight):
            layer.__class__ = _QAT_TYPES[type(layer)]
        layer.weight_bits = b
        layer.act_quant = ActFakeQuant(act_bits) if act_bits is not None else None
    return qat


def strip_qat(model: nn.Module) -> nn.Module:
    """A new plain float model whose weights are the fake-quantized (dequantized) values.

    The layers become their plain torch classes again (ONNX export sees ordinary convs), keep
    ``weight_bits``, and remember their scales in a non-persistent ``weight_scale`` buffer so
    :func:`pack_weights` recovers the exact codes. Activation fake quantization is dropped: int8
    export calibrates its own activation ranges.
    """
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if not isinstance(module, FakeQuantWeight):
            continue
        with torch.no_grad():
            w_q = module.quantized_weight()
            scale = weight_scale(module.weight, module.weight_bits)
        del module.act_quant
        module.__class__ = module.float_type
        module.weight.data.copy_(w_q)
        module.register_buffer("weight_scale", scale, persistent=False)
    return plain


def _is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantWeight) for m in model.modules())


# ---------------------------------------------------------------------------------------------
# packed storage
# ---------------------------------------------------------------------------------------------

_CODES, _SCALE, _BITS = "weight.codes", "weight.scale", "weight.bits"


def _codes_and_scale(layer: nn.Module, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int64, weight's shape) and float32 scales with ``codes * scale == w_q``."""
    w = layer.weight.detach()
    shape = (-1, *([1] * (w.dim() - 1)))
    stored = layer._buffers.get("weight_scale")
    if not isinstance(layer, FakeQuantWeight) and stored is not None and len(stored) == len(w):
        codes = torch.round(w / stored.reshape(shape)).clamp(-_qmax(bits), _qmax(bits))
        if torch.equal(codes * stored.reshape(shape), w):  # still on the grid strip_qat left
            return codes.to(torch.int64), stored.clone()
    scale = weight_scale(w, bits)
    w_q = fake_quant_weight(w, bits)
    return torch.round(w_q / scale.reshape(shape)).to(torch.int64), scale


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ints < 2**bits, little-endian bit order, packed into ceil(n * bits / 8) bytes."""
    planes = (values.reshape(-1, 1) >> np.arange(bits)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (planes.astype(np.int64) << np.arange(bits)).sum(axis=1)


def _packed_layers(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    out = []
    for name, m in model.named_modules():
        bits = getattr(m, "weight_bits", None)
        is_layer = type(m) in _QAT_TYPES or isinstance(m, FakeQuantWeight)
        # 1-bit (binary) layers are another technique's business
        if is_layer and isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS:
            out.append((name, m, bits))
    return out


def pack_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of every layer with ``weight_bits <= 8``, stored at exactly that width.

    For such a layer ``name``: ``name.weight.codes`` (uint8: the codes offset by
    ``2**(b-1) - 1`` to be unsigned and packed ``b`` bits each, little-endian, row-major over the
    weight; 4 bits are two codes per byte), ``name.weight.scale`` (float32, one per output
    channel), ``name.weight.bits`` (uint8, one element) and ``name.bias`` (float32) when the layer
    has one. Float layers are not included (empty dict: nothing quantized). QAT and stripped
    models give the same dict. Save it with ``safetensors.torch.save_file``; inference from these
    weights is still float compute on dequantized values (simulated below 8 bits).
    """
    packed: dict[str, torch.Tensor] = {}
    for name, layer, bits in _packed_layers(model):
        prefix = f"{name}." if name else ""
        codes, scale = _codes_and_scale(layer, bits)
        unsigned = (codes.reshape(-1) + _qmax(bits)).numpy()
        packed[prefix + _CODES] = torch.from_numpy(_pack_bits(unsigned, bits))
        packed[prefix + _SCALE] = scale.contiguous()
        packed[prefix + _BITS] = torch.tensor([bits], dtype=torch.uint8)
        if layer.bias is not None:
            packed[prefix + "bias"] = layer.bias.detach().to(torch.float32).clone()
    return packed


def packed_size_bytes(model: nn.Module) -> int:
    """Exact bytes of :func:`pack_weights`' tensors: codes + scales + bit widths + biases."""
    return sum(t.numel() * t.element_size() for t in pack_weights(model).values())


def unpack_weights(packed: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Load :func:`pack_weights` output into ``model`` (the same architecture), in place.

    Each packed layer gets the dequantized weights ``codes * scale`` (bit for bit what the packed
    model computed with), its bias, and ``weight_bits``. Other parameters are left as they are.
    """
    rest = dict(packed)
    for key in [k for k in packed if k == _CODES or k.endswith("." + _CODES)]:
        prefix = key[: -len(_CODES)]
        name = prefix[:-1]
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"unpack_weights: packed layer {name!r} is not in the model; pass the model "
                "the weights were packed from (same space and params)"
            ) from None
        if prefix + _BITS not in rest or prefix + _SCALE not in rest:
            raise ValueError(
                f"unpack_weights: {name!r} has codes but no {_BITS}/{_SCALE}; pass the whole "
                "dict pack_weights returned"
            )
        bits = _check_bits(int(rest.pop(prefix + _BITS)[0]), f"{name}.weight.bits")
        scale = rest.pop(prefix + _SCALE).to(torch.float32)
        raw = rest.pop(key).numpy()
        bias = rest.pop(prefix + "bias", None)
        weight = getattr(layer, "weight", None)
        needed = math.ceil(weight.numel() * bits / 8) if weight is not None else -1
        if (
            raw.size != needed
            or len(scale) != weight.shape[0]
            or (bias is None) != (layer.bias is None)
            or (bias is not None and bias.shape != layer.bias.shape)
        ):
            raise ValueError(
                f"unpack_weights: the packed {name!r} ({raw.size} bytes at {bits} bits, "
                f"{len(scale)} scales) does not fit the model's layer {layer}; pass the model "
                "the weights were packed from"
            )
        codes = torch.from_numpy(_unpack_bits(raw, bits, weight.numel())) - _qmax(bits)
        values = codes.reshape(weight.shape).to(torch.float32)
        with torch.no_grad():
            weight.copy_(values * scale.reshape(-1, *([1] * (weight.dim() - 1))))
            if bias is not None:
                layer.bias.copy_(bias)
        layer.weight_bits = bits
        if not isinstance(layer, FakeQuantWeight):
            if "weight_scale" in layer._buffers:
                layer._buffers["weight_scale"] = scale.clone()
            else:
                layer.register_buffer("weight_scale", scale.clone(), persistent=False)
    if rest:
        raise ValueError(
            f"unpack_weights: entries {sorted(rest)} belong to no packed layer; pass the dict "
            "pack_weights returned"
        )


def sensitivity(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bits: tuple[int, ...] = (2, 3, 4, 6, 8)
) -> tuple[float, dict[str, dict[int, float]]]:
    """Per-layer quantization sensitivity: the float accuracy on ``(x, y)``, and for each layer
    and bit width the accuracy change when ONLY that layer's weights are rounded to ``bits``
    (symmetric, per channel). Shows where mixed precision can afford few bits."""
    plain = copy.deepcopy(strip_qat(model) if _is_qat(model) else model).eval()

    @torch.no_grad()
    def accuracy() -> float:
        correct = sum(
            int((plain(x[i : i + 1024]).argmax(1) == y[i : i + 1024]).sum())
            for i in range(0, len(x), 1024)
        )
        return correct / max(len(x), 1)

    base = accuracy()
    out: dict[str, dict[int, float]] = {}
    for name in quantizable_layers(plain):
        layer = plain.get_submodule(name)
        original = layer.weight.detach().clone()
        out[name] = {}
        for b in bits:
            with torch.no_grad():
                layer.weight.copy_(fake_quant_weight(original, b))
            out[name][b] = accuracy() - base
        with torch.no_grad():
            layer.weight.copy_(original)
    return base, out
