"""``energy_uj``: estimated energy of one inference (batch 1) in microjoules, from an energy model.

Per-operation energies are Horowitz's 45 nm figures (M. Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014, table of operation energies), as used by Yang et al.
2017 (energy-aware pruning) and Han et al. 2016:

- multiply + add: 32-bit float 3.7 + 0.9 = 4.6 pJ; 16-bit float 1.1 + 0.4 = 1.5 pJ; 8-bit integer
  0.2 + 0.03 = 0.23 pJ (below 8 bits: scaled linearly with the bit width, an assumption);
- memory, per 32 bits: on-chip SRAM (8 kB) 5 pJ, off-chip DRAM 640 pJ.

Model of one layer (conv or Linear): every multiply-add at the layer's weight width (fvcore's
count); its weights read once from DRAM at their stored width (non-zeros only for a sparse layer
stored compressed); its input and output activations read / written once in SRAM at 32 bits (8
when the model runs int8). It is a model, not a measurement: it ranks candidates by the data
movement and arithmetic they imply; ``latency_ms`` measures real time.
"""

from __future__ import annotations

import torch
from torch import nn

from objectives.base import MeasureContext, Objective
from objectives.flops import flops_by_module

MAC_PJ = {32: 4.6, 16: 1.5, 8: 0.23}  # Horowitz 2014, 45 nm: multiply + add
SRAM_PJ_PER_32B = 5.0
DRAM_PJ_PER_32B = 640.0
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def mac_pj(bits: int) -> float:
    if bits in MAC_PJ:
        return MAC_PJ[bits]
    if bits > 16:
        return MAC_PJ[32]
    if bits > 8:
        return MAC_PJ[16]
    return MAC_PJ[8] * bits / 8  # below 8 bits: linear in the width (an assumption)


def layer_energy(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Per conv / Linear layer: ``macs``, ``compute_pj``, ``weights_pj``, ``activations_pj``."""
    acts: dict[str, int] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS)}

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            acts[name] = acts.get(name, 0) + inputs[0].numel() + output.numel()

        return fn

    was = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    by_module = flops_by_module(model, input_shape)
    out = {}
    for name, m in layers.items():
        bits = int(getattr(m, "weight_bits", 32))
        w = m.weight.detach()
        stored = int((w != 0).sum()) if getattr(m, "sparse_weight", False) else w.numel()
        act_bits = 8 if bits <= 8 else 32
        macs = float(by_module.get(name, 0))
        out[name] = {
            "macs": macs,
            "compute_pj": macs * mac_pj(bits),
            "weights_pj": stored * bits / 32 * DRAM_PJ_PER_32B,
            "activations_pj": acts.get(name, 0) * act_bits / 32 * SRAM_PJ_PER_32B,
        }
    return out


def energy_uj(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Total estimated energy of one inference, in microjoules."""
    per = layer_energy(model, input_shape)
    return sum(sum(v for k, v in e.items() if k != "macs") for e in per.values()) / 1e6


class EnergyUj(Objective):
    name = "energy_uj"
    direction = "minimize"
    needs_training = False
    unit = "uJ"
    description = "estimated energy per example (Horowitz 45 nm model: MACs + memory traffic)"

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        return float(energy_uj(model, ctx.input_shape))
