"""Binary and ternary weights (and binary activations) with straight-through training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.compress.binary import BinaryActivation, binarize, binarize_model
from nas.compress.sparse_ops import bake
from objectives import model_size_bytes


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def test_binary_and_ternary_values_per_channel() -> None:
    w = torch.randn(6, 20)
    b = binarize(w, "binary")
    for row, src in zip(b, w, strict=True):
        assert torch.allclose(row.abs(), src.abs().mean().expand_as(row))
        assert torch.equal(torch.sign(row), torch.sign(src))
    t = binarize(w, "ternary")
    for row, src in zip(t, w, strict=True):
        delta = 0.7 * float(src.abs().mean())
        keep = src.abs() > delta
        assert torch.equal(row != 0, keep)
        assert row[keep].abs().unique().numel() == 1  # one alpha per channel
        assert float(row[keep].abs()[0]) == pytest.approx(float(src.abs()[keep].mean()))


def test_straight_through_training_and_sizes_in_bits() -> None:
    model = binarize_model(_mlp(), "binary")
    assert not hasattr(model[1], "weight_bits") and not hasattr(model[5], "weight_bits")  # float
    x = torch.rand(8, 1, 8, 8)
    model(x).sum().backward()
    assert model[3].parametrizations.weight.original.grad.abs().sum() > 0  # the floats learn
    bake(model)
    assert all(r.abs().unique().numel() == 1 for r in model[3].weight)  # one alpha per channel
    assert model[3].weight_bits == 1
    dense = model_size_bytes(_mlp())
    # the middle layer's 32x32 weights at 1 bit instead of 32, plus a float32 alpha per output
    # channel; its 32 biases stay 32-bit
    assert dense - model_size_bytes(model) == 32 * 32 * 4 - 32 * 32 // 8 - 32 * 4
    assert not getattr(model[3], "sparse_weight", False)


def test_binary_activations_are_signs_with_a_clipped_gradient() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 3.0], requires_grad=True)
    y = BinaryActivation()(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    model = binarize_model(_mlp(), "ternary", activations="binary")
    assert isinstance(model[3], nn.Sequential) and isinstance(model[3][0], BinaryActivation)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least three"):
        binarize_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), "binary")
