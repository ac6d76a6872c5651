"""Data-free quantization: chains, equalization that keeps the function, bias correction."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from nas.compress.dfq_ops import ChannelClip, _in_ranges, _weight_error, dfq, find_chains
from search_spaces.mobilenet import mobilenet

SHAPE = (1, 28, 28)


def _trained_stats(model: nn.Module, shape=SHAPE) -> nn.Module:
    """BN statistics of real forward passes, and uneven channel scales (as after training)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.logspace(-1, 1, m.out_channels).reshape(-1, 1, 1, 1))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # running statistics = the plain average of the batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(64, *shape))
    return model.eval()


def _mobilenet() -> nn.Module:
    params = {"width_mult": 1.0, "se": False}
    for s in range(3):
        params |= {f"depth_s{s}": 2, f"expand_s{s}": 4, f"kernel_s{s}": 3}
    return _trained_stats(
        mobilenet(optuna.trial.FixedTrial(params), input_shape=SHAPE, num_classes=10)
    )


def test_chains_cover_expand_depthwise_and_depthwise_project() -> None:
    chains = find_chains(_mobilenet())
    kinds = {(a.rsplit(".", 2)[-2], b.rsplit(".", 2)[-2]) for a, _, _, b in chains}
    assert kinds == {("expand", "depthwise"), ("depthwise", "project")}
    assert len(chains) == 2 * 6  # every block of the three 2-block stages


def test_equalization_keeps_the_function_and_evens_the_depthwise_ranges() -> None:
    model = _mobilenet()
    eq = dfq(model, bias_correction=False)
    assert any(isinstance(m, ChannelClip) for m in eq.modules())  # ReLU6 -> per-channel clips
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), model(x), atol=1e-4, rtol=1e-4)
    dw_before = model.blocks[0].depthwise[0].weight.detach().abs().flatten(1).amax(1)
    dw_after = eq.blocks[0].depthwise[0].weight.detach().abs().flatten(1).amax(1)
    assert dw_after.max() / dw_after.min() < 0.5 * dw_before.max() / dw_before.min()


def test_bias_correction_removes_the_mean_output_shift_of_rounding() -> None:
    torch.manual_seed(0)
    model = _trained_stats(
        nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 8, 1),
        ),
        shape=(1, 8, 8),
    )
    plain, corrected = dfq(model, bias_correction=False), dfq(model)
    x = torch.rand(512, 1, 8, 8)
    with torch.no_grad():
        hidden = plain[2](plain[1](plain[0](x)))  # the folded conv_a -> (identity) -> ReLU
        want = plain[3](hidden)

        def quantized(net: nn.Module) -> torch.Tensor:
            w = net[3].weight
            return nn.functional.conv2d(hidden, w + _weight_error(w), net[3].bias)

        shift_plain = (quantized(plain) - want).mean((0, 2, 3)).abs().mean()
        shift_corrected = (quantized(corrected) - want).mean((0, 2, 3)).abs().mean()
    assert shift_corrected < 0.5 * shift_plain


def test_in_ranges_reads_depthwise_and_plain_convs() -> None:
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -5, 2], [3, 1, -4]]).reshape(2, 3, 1, 1))
    assert _in_ranges(conv).tolist() == [3.0, 5.0, 4.0]
    dw = nn.Conv2d(2, 2, 1, groups=2, bias=False)
    with torch.no_grad():
        dw.weight.copy_(torch.tensor([-2.0, 7.0]).reshape(2, 1, 1, 1))
    assert _in_ranges(dw).tolist() == [2.0, 7.0]
    assert pytest.approx(float(_weight_error(torch.tensor([1.0, 0.5]))[0])) == 0.0
