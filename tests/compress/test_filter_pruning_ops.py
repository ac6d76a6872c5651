"""Filter pruning: criteria rank the right filters, removal is physical and dependency-aware."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nas.compress.filter_pruning_ops import (
    CRITERIA,
    channel_scores,
    prunable_layers,
    prune_filters,
)
from nas.onnx_utils import session, to_onnx
from objectives import count_flops, count_params
from search_spaces.mobilenet import mobilenet

SHAPE = (1, 28, 28)


def _mobilenet(se: bool = True) -> nn.Module:
    torch.manual_seed(0)
    params = {"width_mult": 1.0, "se": se}
    for s in range(3):
        params |= {f"depth_s{s}": 2, f"expand_s{s}": 3, f"kernel_s{s}": 3}
    model = mobilenet(optuna.trial.FixedTrial(params), input_shape=SHAPE, num_classes=10)
    for m in model.modules():  # BN statistics as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def _data(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


class _Plain(nn.Module):
    """conv(1->4) -> ReLU -> conv(4->3) -> global pool -> Linear: one prunable group (4)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.a(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_half_the_filters_of_a_residual_mobilenet(criterion: str) -> None:
    model = _mobilenet()
    x, y = _data()
    out = prune_filters(model, 0.5, SHAPE, criterion=criterion, data=(x, y))
    assert out(x[:4]).shape == (4, 10)
    before = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    after = sum(m.out_channels for m in out.modules() if isinstance(m, nn.Conv2d))
    assert after < 0.62 * before  # ~half of the prunable channels (head/SE convs stay)
    assert count_flops(out, SHAPE) < 0.6 * count_flops(model, SHAPE)
    assert count_params(out) < 0.6 * count_params(model)
    # the exported ONNX model is the pruned model
    y_onnx = session(to_onnx(out, SHAPE)).run(None, {"input": x[:8].numpy()})[0]
    np.testing.assert_allclose(y_onnx, out(x[:8]).detach().numpy(), atol=1e-4)


def test_residual_stage_is_pruned_together() -> None:
    model = _mobilenet(se=False)
    out = prune_filters(model, 0.4, SHAPE)
    # stage 0's two blocks add to the stem: stem and both project convs lose the same channels
    stem = out.get_submodule(prunable_layers(model, SHAPE)[0])
    widths = {out.get_submodule(f"blocks.{i}.project.0").out_channels for i in (0, 1)}
    assert widths == {stem.out_channels} and stem.out_channels < 16
    assert out.get_submodule("blocks.1.expand.0").in_channels == stem.out_channels


def test_l1_l2_remove_the_smallest_filters_fpgm_the_redundant_one() -> None:
    model = _Plain()
    with torch.no_grad():
        w = torch.randn(4, 1, 3, 3)
        w[1] *= 0.01  # tiny filter: l1 / l2 remove it
        model.a.weight.copy_(w)
    for criterion in ("l1", "l2"):
        s = channel_scores(model, criterion, SHAPE)[0]
        assert int(np.argmin(s)) == 1
    with torch.no_grad():  # three filters near each other, one far: fpgm keeps the far one
        base = torch.randn(1, 1, 3, 3)
        model.a.weight.copy_(
            torch.cat([base, base + 0.01, base - 0.01, 10 * torch.randn_like(base)])
        )
    s = channel_scores(model, "fpgm", SHAPE)[0]
    assert int(np.argmax(s)) == 3 and int(np.argmin(s)) in (0, 1, 2)


def test_taylor_prunes_filters_the_loss_does_not_feel() -> None:
    torch.manual_seed(0)
    model = _Plain()
    with torch.no_grad():
        model.b.weight[:, 2] = 0.0  # channel 2 of `a` feeds nothing: zero gradient
    x = torch.rand(64, *SHAPE)
    y = torch.randint(0, 2, (64,))
    s = channel_scores(model, "taylor", SHAPE, (x, y))[0]
    assert int(np.argmin(s)) == 2 and s[2] == 0.0
    out = prune_filters(model, 0.25, SHAPE, criterion="taylor", data=(x, y))
    assert out.a.out_channels == 3 and out.b.in_channels == 3
    # the removed channel contributed nothing: outputs are unchanged
    torch.testing.assert_close(out(x), model(x))


def test_per_layer_ratios_and_their_errors() -> None:
    model = _mobilenet()
    layers = prunable_layers(model, SHAPE)
    out = prune_filters(model, 0.0, SHAPE, per_layer={layers[-1]: 0.5})
    assert (
        out.get_submodule(layers[-1]).out_channels
        == model.get_submodule(layers[-1]).out_channels // 2
    )
    assert out.get_submodule(layers[0]).out_channels == model.get_submodule(layers[0]).out_channels
    with pytest.raises(ValueError, match="cannot be pruned: 'nope'"):
        prune_filters(model, 0.0, SHAPE, per_layer={"nope": 0.5})
    with pytest.raises(ValueError, match="needs labelled training examples"):
        prune_filters(model, 0.5, SHAPE, criterion="taylor")
    with pytest.raises(ValueError, match="unknown criterion 'l3'"):
        prune_filters(model, 0.5, SHAPE, criterion="l3")
    with pytest.raises(ValueError, match="ratio"):
        prune_filters(model, 1.5, SHAPE)


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(torch.relu(z).mean((2, 3)))


def test_channels_are_pruned_through_a_concat_at_their_offsets() -> None:
    torch.manual_seed(0)
    model = _Concat().eval()
    assert prunable_layers(model, SHAPE) == ["a", "b", "c"]
    with torch.no_grad():  # a's channel 1 and b's channel 2 output exactly 0
        model.a.weight[1], model.a.bias[1] = 0.0, 0.0
        model.b.weight[2], model.b.bias[2] = 0.0, 0.0
    out = prune_filters(model, 0.0, SHAPE, per_layer={"a": 0.25, "b": 0.25})
    assert (out.a.out_channels, out.b.out_channels, out.c.in_channels) == (3, 3, 6)
    # c lost input columns 1 (a's) and 4 + 2 (b's, after a's 4 channels)
    keep = [0, 2, 3, 4, 5, 7]
    torch.testing.assert_close(out.c.weight, model.c.weight[:, keep])
    x = torch.rand(4, *SHAPE)
    torch.testing.assert_close(out(x), model(x))


def test_a_ghost_cnn_is_pruned_through_its_concats() -> None:
    from search_spaces.cnn import cnn

    params = {"depth": 2, "batch_norm": True, "width_0": 16, "kernel_0": 3, "pool_0": "max"}
    params |= {
        "width_1": 16,
        "kernel_1": 3,
        "pool_1": "max",
        "block_0": "ghost",
        "block_1": "ghost",
    }
    model = cnn(
        optuna.trial.FixedTrial(params), input_shape=SHAPE, num_classes=10, blocks=["ghost"]
    ).eval()
    out = prune_filters(model, 0.5, SHAPE)
    assert count_flops(out, SHAPE) < 0.7 * count_flops(model, SHAPE)
    x = torch.rand(4, *SHAPE)
    y = session(to_onnx(out, SHAPE)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(y, out(x).detach().numpy(), atol=1e-4)


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c(torch.relu(self.g(torch.relu(self.a(x)))))
        return self.head(z.mean((2, 3)))


def test_grouped_convs_keep_their_blocks_even() -> None:
    torch.manual_seed(0)
    model = _Grouped().eval()
    assert prunable_layers(model, SHAPE) == ["a", "g", "c"]
    with torch.no_grad():  # a's channels 1 (g's block 0) and 5 (block 1) output exactly 0
        for c in (1, 5):
            model.a.weight[c], model.a.bias[c] = 0.0, 0.0
    out = prune_filters(model, 0.0, SHAPE, per_layer={"a": 0.25})
    assert (out.a.out_channels, out.g.in_channels, out.g.groups) == (6, 6, 2)
    x = torch.rand(4, *SHAPE)
    torch.testing.assert_close(out(x), model(x))  # the removed channels carried nothing
    # a global ratio removes the same positions from each block of g
    out = prune_filters(model, 0.5, SHAPE)
    assert out.g.in_channels % 2 == 0 and out.g.out_channels % 2 == 0
    assert out(x).shape == (4, 2)
    y = session(to_onnx(out, SHAPE)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(y, out(x).detach().numpy(), atol=1e-4)


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.flatten(torch.relu(self.a(x)), 1))))


def test_channels_are_pruned_through_a_flatten() -> None:
    torch.manual_seed(0)
    model = _Flat().eval()
    assert prunable_layers(model, SHAPE) == ["a", "fc"]
    with torch.no_grad():  # a's channel 2 outputs exactly 0
        model.a.weight[2], model.a.bias[2] = 0.0, 0.0
    out = prune_filters(model, 0.0, SHAPE, per_layer={"a": 0.25})
    # fc lost the 784 input columns of a's channel 2, in place
    assert (out.a.out_channels, out.fc.in_features) == (3, 3 * 784)
    keep = [c * 784 + p for c in (0, 1, 3) for p in range(784)]
    torch.testing.assert_close(out.fc.weight, model.fc.weight[:, keep])
    x = torch.rand(4, *SHAPE)
    torch.testing.assert_close(out(x), model(x))
    seq = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # the only layer makes the output
    with pytest.raises(ValueError, match="no prunable channels: every conv / Linear output is"):
        prune_filters(seq, 0.5, SHAPE)


class _Rolled(nn.Module):
    """A model with an op the dependency analysis does not know (torch.roll on the channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.roll(torch.relu(self.a(x)), 1, dims=1)
        return self.head(self.b(x).mean((2, 3)))


def test_an_unknown_op_keeps_the_channels_it_touches() -> None:
    from nas.compress import get
    from nas.compress.channel_groups import unsupported_ops

    model = _Rolled()
    assert unsupported_ops(model, SHAPE) == ["op roll (RollBackward0)"]
    assert prunable_layers(model, SHAPE) == ["b"]  # a's channels are rolled: kept
    out = prune_filters(model, 0.5, SHAPE)
    assert out.a.out_channels == 4 and out.b.out_channels == 3
    tech = get("filter_pruning")
    assert tech.not_applicable(model, SHAPE) is None
    assert tech.not_applicable(_mobilenet(), SHAPE) is None
    only = nn.Sequential(nn.Conv2d(1, 4, 3), _Roll(), nn.Flatten(), nn.Linear(4 * 26 * 26, 2))
    reason = tech.not_applicable(only, SHAPE)
    assert reason is not None and "\n" not in reason
    assert "op roll (RollBackward0)" in reason


class _Roll(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=1)


def test_energy_aware_pruning_takes_more_from_the_costly_layers() -> None:
    from objectives.energy_uj import energy_uj

    model = _mobilenet()
    by_l1 = prune_filters(model, 0.3, SHAPE, criterion="l1")
    by_energy = prune_filters(model, 0.3, SHAPE, criterion="energy")
    # the same number of channels removed, but chosen where the energy goes
    assert energy_uj(by_energy, SHAPE) < energy_uj(by_l1, SHAPE)
