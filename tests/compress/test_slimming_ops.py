"""Network slimming ops: channel groups from the dependency graph, exact removal, smaller models."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.compress.slimming_ops import bn_l1_penalty, slim, slimmable_bns, slimming_groups
from nas.onnx_utils import session, to_onnx
from objectives import count_flops
from search_spaces.cnn import cnn
from search_spaces.mlp import mlp
from search_spaces.mobilenet import mobilenet

optuna.logging.set_verbosity(optuna.logging.WARNING)

NUM_CLASSES = 10
SEEDS = (0, 1, 2)
CASES = [
    (cnn, (1, 28, 28)),
    (cnn, (1, 8, 8)),
    (mobilenet, (1, 28, 28)),
    (mobilenet, (1, 8, 8)),
]
PARAMS = [(space, shape, seed) for space, shape in CASES for seed in SEEDS]
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _ids(value: object) -> str:
    return getattr(value, "__name__", str(value))


def _sample(space: Callable[..., nn.Module], seed: int, shape: tuple[int, ...], **kw) -> nn.Module:
    """A sampled model in eval mode as if trained: random BN gammas/betas, calibrated statistics."""
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    torch.manual_seed(seed)
    model = space(trial, input_shape=shape, num_classes=NUM_CLASSES, **kw)
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.95 + 0.05)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(16, *shape, generator=gen))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def _x(shape: tuple[int, ...], batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(123))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn(model: nn.Module, name: str) -> nn.BatchNorm2d:
    return model.get_submodule(name)  # type: ignore[return-value]


@pytest.mark.parametrize(("space", "shape", "seed"), PARAMS, ids=_ids)
def test_ratio_zero_keeps_outputs_and_shape(space, shape, seed) -> None:
    model = _sample(space, seed, shape)
    out = slim(model, 0.0, shape)
    assert out is not model
    assert _params(out) == _params(model)
    with torch.no_grad():
        torch.testing.assert_close(out(_x(shape)), model(_x(shape)), rtol=0, atol=0)
        spread = (model(_x(shape)) - model(_x(shape)).mean(0)).abs().max()
    assert spread > 1e-2  # the outputs depend on the input: exactness checks below mean something


@pytest.mark.parametrize(("space", "shape", "seed"), PARAMS, ids=_ids)
def test_zero_gamma_channels_are_removed_exactly(space, shape, seed) -> None:
    """Channels whose every BN has gamma = beta = 0 output exact zeros: removing them is exact.

    Zeroing all BNs of a group covers residual stages (stem + project BNs) and the expand/depthwise
    pairs of MobileNet, where zeroing the expand BN alone is exact only if the depthwise BN maps 0
    to 0 (true for fresh running stats, not for the random ones used here).
    """
    model = _sample(space, seed, shape)
    groups = slimming_groups(model, shape)
    gen = torch.Generator().manual_seed(seed)
    zeroed = 0
    with torch.no_grad():
        for names in groups:
            size = _bn(model, names[0]).num_features
            chosen = torch.randperm(size, generator=gen)[: size // 3]
            zeroed += len(chosen)
            for name in names:
                _bn(model, name).weight[chosen] = 0.0
                _bn(model, name).bias[chosen] = 0.0
    total = sum(_bn(model, names[0]).num_features for names in groups)
    out = slim(model, zeroed / total, shape)
    kept = sum(_bn(out, names[0]).num_features for names in groups)
    assert kept == total - zeroed
    with torch.no_grad():
        torch.testing.assert_close(out(_x(shape)), model(_x(shape)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_zeroed_expand_channels_slice_depthwise_and_se(seed: int) -> None:
    """Expand-BN channels with gamma = beta = 0 are removed with the depthwise conv and SE slices.

    The depthwise BN is in series, so the channel scores min(|gamma_expand|, |gamma_dw|) = 0.
    Removal is exact when the depthwise BN maps 0 to 0 (beta = running_mean = 0 there, as at init).
    """
    shape = (1, 28, 28)
    model = _sample(mobilenet, seed, shape, expansions=(2, 4), se=True)
    group = next(g for g in slimming_groups(model, shape) if "blocks.0.expand.1" in g)
    assert group == ["blocks.0.expand.1", "blocks.0.depthwise.1"]
    size = _bn(model, group[0]).num_features
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[: size // 2]
    expand_bn, dw_bn = _bn(model, group[0]), _bn(model, group[1])
    with torch.no_grad():
        expand_bn.weight[chosen] = expand_bn.bias[chosen] = 0.0
        dw_bn.bias[chosen] = dw_bn.running_mean[chosen] = 0.0
    out = slim(model, 0.0, shape, per_layer={"blocks.0.expand.1": 0.5})
    block, n = out.blocks[0], size - size // 2
    assert block.expand[0].out_channels == n and block.expand[1].num_features == n
    dw = block.depthwise[0]
    assert dw.in_channels == dw.out_channels == dw.groups == n
    assert tuple(dw.weight.shape[:2]) == (n, 1)
    assert block.se.gate[1].in_channels == n
    assert block.se.gate[3].out_channels == n and block.se.gate[3].bias.shape == (n,)
    assert block.project[0].in_channels == n
    with torch.no_grad():
        torch.testing.assert_close(out(_x(shape)), model(_x(shape)), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("space", "shape", "seed"), PARAMS, ids=_ids)
def test_half_ratio_shrinks_params_and_flops(space, shape, seed) -> None:
    model = _sample(space, seed, shape)
    out = slim(model, 0.5, shape)
    assert _params(out) < _params(model)
    before, after = count_flops(model, shape), count_flops(out, shape)
    assert after < before
    if space is cnn:  # every conv loses ~half its outputs; inner convs also half their inputs
        assert after <= 0.6 * before
    with torch.no_grad():
        assert out(_x(shape)).shape == (4, NUM_CLASSES)


@pytest.mark.parametrize(("space", "shape", "seed"), PARAMS[::2], ids=_ids)
def test_slimmed_model_runs_in_onnxruntime(space, shape, seed) -> None:
    out = slim(_sample(space, seed, shape), 0.5, shape)
    sess = session(to_onnx(out, shape))
    x = _x(shape)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, out(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("space", "shape"), CASES, ids=_ids)
def test_slimmed_model_trains(space, shape) -> None:
    out = slim(_sample(space, 0, shape), 0.5, shape).train()
    opt = torch.optim.SGD(out.parameters(), lr=0.1)
    loss = F.cross_entropy(out(_x(shape, 8)), torch.arange(8) % NUM_CLASSES)
    loss = loss + bn_l1_penalty(out, 1e-4, shape)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in out.parameters())
    opt.step()


@pytest.mark.parametrize(("space", "shape"), CASES, ids=_ids)
def test_penalty_gradient_reaches_gammas(space, shape) -> None:
    model = _sample(space, 1, shape)
    names = slimmable_bns(model, shape)
    assert names
    penalty = bn_l1_penalty(model, 0.01, shape)
    expected = 0.01 * sum(_bn(model, n).weight.abs().sum() for n in names)
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    for n in names:
        torch.testing.assert_close(_bn(model, n).weight.grad, 0.01 * _bn(model, n).weight.sign())
        assert _bn(model, n).bias.grad is None
    assert bn_l1_penalty(model, 0.01, shape) == penalty  # cached analysis, same answer


@pytest.mark.parametrize(("space", "shape"), CASES, ids=_ids)
def test_input_model_is_not_modified(space, shape) -> None:
    model = _sample(space, 2, shape).train()
    state = copy.deepcopy(model.state_dict())
    params = [id(p) for p in model.parameters()]
    text = repr(model)
    out = slim(model, 0.7, shape)
    assert repr(model) == text and repr(out) != text
    assert [id(p) for p in model.parameters()] == params
    assert model.training and out.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_mobilenet_residual_stage_is_one_group() -> None:
    shape = (1, 28, 28)
    model = _sample(mobilenet, 1, shape)
    assert model.blocks[0].use_residual
    stage = next(g for g in slimming_groups(model, shape) if "stem.1" in g)
    assert "blocks.0.project.1" in stage
    out = slim(model, 0.9, shape)  # prunes the stage, keeping every member consistent
    width = out.stem[0].out_channels
    assert width < model.stem[0].out_channels
    assert out.stem[1].num_features == out.blocks[0].project[0].out_channels == width


def test_cnn_1d_is_slimmed() -> None:
    shape = (1, 40)
    model = _sample(cnn, 3, shape)
    out = slim(model, 0.5, shape)
    assert _params(out) < _params(model)
    with torch.no_grad():
        assert out(_x(shape)).shape == (4, NUM_CLASSES)


def test_per_layer_prunes_only_the_named_group() -> None:
    shape = (1, 28, 28)
    model = _sample(cnn, 1, shape, min_depth=2)
    first, *rest = slimmable_bns(model, shape)
    out = slim(model, 0.9, shape, per_layer={first: 0.5})  # ratio is ignored with per_layer
    assert _bn(out, first).num_features == _bn(model, first).num_features // 2
    assert all(_bn(out, n).num_features == _bn(model, n).num_features for n in rest)
    gammas = _bn(model, first).weight.detach()
    kept = sorted(gammas.tolist(), reverse=True)[: _bn(out, first).num_features]
    assert sorted(_bn(out, first).weight.tolist(), reverse=True) == kept  # largest |gamma| kept
    with pytest.raises(ValueError, match="cannot be pruned"):
        slim(model, 0.0, shape, per_layer={"features.99": 0.5})


def test_min_channels_are_kept() -> None:
    shape = (1, 8, 8)
    model = _sample(mobilenet, 0, shape)
    out = slim(model, 1.0, shape, min_channels=3)
    for names in slimming_groups(model, shape):
        assert _bn(out, names[0]).num_features == min(3, _bn(model, names[0]).num_features)


def test_untrained_model_loses_about_ratio_per_layer() -> None:
    """All gammas equal (fresh init): ties are broken so each layer loses about ``ratio``."""
    shape = (1, 28, 28)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4)).ask()
    model = cnn(trial, input_shape=shape, num_classes=NUM_CLASSES, min_depth=3)
    out = slim(model, 0.5, shape)
    for name in slimmable_bns(model, shape):
        n = _bn(model, name).num_features
        assert abs(_bn(out, name).num_features - n / 2) <= 1


def test_by_position_removes_each_groups_trailing_channels() -> None:
    """A supernet's sub-network: its leading channels are kept whatever the gammas say."""
    shape = (1, 28, 28)
    model = _sample(cnn, 1, shape, min_depth=3)
    with torch.no_grad():  # gammas that rank the trailing channels first
        for name in slimmable_bns(model, shape):
            bn = _bn(model, name)
            bn.weight.copy_(torch.linspace(0.1, 1.0, bn.num_features))
    out = slim(model, 0.5, shape, by_position=True)
    for name in slimmable_bns(model, shape):
        bn, kept = _bn(model, name), _bn(out, name)
        assert abs(kept.num_features - bn.num_features / 2) <= 1
        k = kept.num_features
        assert torch.equal(kept.weight, bn.weight[:k])
        assert torch.equal(kept.running_mean, bn.running_mean[:k])
    by_gamma = slim(model, 0.5, shape)
    name = slimmable_bns(model, shape)[0]
    k = _bn(by_gamma, name).num_features
    assert torch.equal(_bn(by_gamma, name).weight, _bn(model, name).weight[-k:])


def test_models_without_batchnorm_are_rejected() -> None:
    shape = (1, 28, 28)
    for model in (_sample(mlp, 0, shape), _sample(cnn, 0, shape, batch_norm=False)):
        assert slimmable_bns(model, shape) == []
        assert float(bn_l1_penalty(model, 1.0, shape)) == 0.0
        with pytest.raises(ValueError, match="has no BatchNorm layers; network slimming needs"):
            slim(model, 0.5, shape)


class _Branchy(nn.Module):
    """A channel concat, functional ops and mean-pooling (all followed)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.bn_a(self.a(x))), self.bn_b(self.b(x)).relu()], dim=1)
        return self.fc(F.relu(self.bn_c(self.c(y))).mean((2, 3)))


class _Untraceable(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it; the autograd graph can)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_channels_are_slimmed_through_a_concat() -> None:
    model, shape = _Branchy().eval(), (1, 6, 6)
    assert slimmable_bns(model, shape) == ["bn_a", "bn_b", "bn_c"]
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.tensor([1.0, 0.01, 1.0, 1.0]))
        model.bn_b.weight.copy_(torch.tensor([1.0, 1.0, 0.02, 1.0]))
        model.bn_c.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 0.03, 1.0, 1.0]))
    out = slim(model, 3 / 14, (1, 6, 6))  # the three small gammas, one per group
    assert (out.a.out_channels, out.b.out_channels, out.c.out_channels) == (3, 3, 5)
    assert out.c.in_channels == 6 and out.fc.in_features == 5
    keep = [0, 2, 3, 4, 5, 7]  # a's channel 1 and b's channel 2 (4 + 2) left c's input
    torch.testing.assert_close(out.c.weight, model.c.weight[[0, 1, 2, 4, 5]][:, keep])


class _CatSpatial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn_a(self.a(x)))
        y = torch.cat([y, y], dim=2)  # along the height: not a channel concat
        return self.fc(F.relu(self.bn_c(self.c(y))).mean((2, 3)))


def test_unsupported_ops_pin_channels() -> None:
    model, shape = _CatSpatial().eval(), (1, 6, 6)
    assert slimmable_bns(model, shape) == ["bn_c"]
    out = slim(model, 0.5, (1, 6, 6))
    assert out.c.out_channels == out.fc.in_features == 3
    assert out.a.out_channels == 4


def test_bad_inputs_raise_value_error() -> None:
    shape = (1, 8, 8)
    model = _sample(cnn, 0, shape)
    with pytest.raises(ValueError, match="cannot trace ConvNet with one input of shape"):
        slim(model, 0.5, (3, 8, 8))  # a 1-channel network fed 3 channels
    with pytest.raises(ValueError, match="none can be slimmed: each is tied to the model's out"):
        slim(_Untraceable(), 0.5, shape)  # its only BN makes the output
    with pytest.raises(ValueError, match="ratio"):
        slim(model, 1.5, shape)
    with pytest.raises(ValueError, match="min_channels"):
        slim(model, 0.5, shape, min_channels=0)
    with pytest.raises(ValueError, match="input_shape"):
        slim(model, 0.5, (0, 8))
    with pytest.raises(ValueError, match="strength"):
        bn_l1_penalty(model, -1.0, shape)


def test_round_to_keeps_multiples_of_the_block() -> None:
    import optuna

    from search_spaces.cnn import cnn

    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5)).ask()
    model = cnn(trial, input_shape=(1, 28, 28), num_classes=10, widths=(32, 48, 64), min_depth=2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(0))
    plain, rounded = slim(model, 0.5, (1, 28, 28)), slim(model, 0.5, (1, 28, 28), round_to=8)
    widths = [m.out_channels for m in rounded.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert sum(p.numel() for p in rounded.parameters()) >= sum(
        p.numel() for p in plain.parameters()
    )
    with pytest.raises(ValueError, match="round_to"):
        slim(model, 0.5, (1, 28, 28), round_to=0)


class _GroupedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.g, self.bn_g = nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn_g(self.g(F.relu(self.bn_a(self.a(x))))))
        return self.fc(y.mean((2, 3)))


def test_grouped_conv_channels_are_slimmed_evenly_per_group() -> None:
    model = _GroupedBN().eval()
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.tensor([1.0, 0.1, 0.2, 0.3, 1.0, 1.0, 1.0, 1.0]))
    out = slim(model, 3 / 16, (1, 6, 6))  # three low gammas, all in g's blocks 0 and 1
    assert out.g.in_channels % 4 == 0 and out.g.groups == 4
    assert out(torch.rand(2, 1, 6, 6)).shape == (2, 3)
