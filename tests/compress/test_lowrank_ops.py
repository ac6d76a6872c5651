"""Low-rank factorization ops: shapes, costs that never grow, SVD exactness, ONNX parity."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nas.compress.lowrank_ops import LowRank, eligible_layers, factorize, factorize_layer
from nas.onnx_utils import session, to_onnx
from objectives import count_flops
from search_spaces.cnn import cnn
from search_spaces.mlp import mlp
from search_spaces.mobilenet import mobilenet

optuna.logging.set_verbosity(optuna.logging.WARNING)

NUM_CLASSES = 10
SEEDS = (0, 1, 2)
RATIOS = (0.1, 0.25, 0.5, 0.75, 1.0)
CASES = [
    (cnn, (1, 28, 28)),
    (cnn, (1, 8, 8)),
    (cnn, (1, 40)),  # Conv1d
    (mobilenet, (1, 28, 28)),
    (mlp, (1, 28, 28)),
    (mlp, (1, 8, 8)),
]


def _ids(value: object) -> str:
    return getattr(value, "__name__", str(value))


def _sample(space: Callable[..., nn.Module], seed: int, shape: tuple[int, ...], **kw) -> nn.Module:
    torch.manual_seed(seed)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    return space(trial, input_shape=shape, num_classes=NUM_CLASSES, **kw).eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _snapshot(model: nn.Module) -> tuple[str, dict[str, torch.Tensor], list[bool]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return repr(model), state, [m.training for m in model.modules()]


def _same(a: tuple, b: tuple) -> bool:
    return (
        a[0] == b[0]
        and a[2] == b[2]
        and a[1].keys() == b[1].keys()
        and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    )


def _product(pair: LowRank) -> torch.Tensor:
    """The rank-r weight ``second @ first`` as an ``out x in`` matrix."""
    first, second = pair[0].weight.detach(), pair[1].weight.detach()
    return second.reshape(second.shape[0], -1) @ first.reshape(first.shape[0], -1)


def _rel_error(weight: torch.Tensor, pair: LowRank) -> float:
    w = weight.reshape(weight.shape[0], -1)
    return float(torch.linalg.norm(w - _product(pair)) / torch.linalg.norm(w))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("space", "shape"), CASES, ids=_ids)
def test_costs_never_grow_and_full_rank_is_identity(space, shape, seed) -> None:
    model = _sample(space, seed, shape)
    before = _snapshot(model)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        reference = model(x)
    flops, params = count_flops(model, shape), _params(model)

    for ratio in RATIOS:
        small = factorize(model, ratio, shape)
        assert small is not model
        with torch.no_grad():
            out = small(x)
        assert out.shape == reference.shape
        assert count_flops(small, shape) <= flops, ratio
        assert _params(small) <= params, ratio
        pairs = [m for m in small.modules() if isinstance(m, LowRank)]
        if ratio == 1.0:
            assert not pairs
            assert torch.equal(out, reference)
        for pair in pairs:
            assert pair[0].lowrank_rank == pair[1].lowrank_rank >= 1
    assert _same(before, _snapshot(model)), "factorize changed its input model"


@pytest.mark.parametrize(("space", "shape"), CASES, ids=_ids)
def test_eligible_layers_are_replaced_at_low_ratio(space, shape) -> None:
    model = _sample(space, 0, shape)
    before = _snapshot(model)
    names = eligible_layers(model, shape)
    assert _same(before, _snapshot(model)), "eligible_layers changed its input model"
    assert names, "every built-in space has an eligible layer"
    modules = dict(model.named_modules())
    for name in names:
        assert type(modules[name]) in (nn.Linear, nn.Conv1d, nn.Conv2d)
        assert getattr(modules[name], "groups", 1) == 1
    small = dict(factorize(model, 0.1, shape).named_modules())
    replaced = [name for name in names if isinstance(small[name], LowRank)]
    assert replaced, "ratio 0.1 should pay for some eligible layer"
    lowranks = {n for n, m in small.items() if isinstance(m, LowRank)}
    assert lowranks <= set(names)


def test_mobilenet_skips_depthwise_convs() -> None:
    model = _sample(mobilenet, 1, (1, 28, 28))
    names = set(eligible_layers(model, (1, 28, 28)))
    depthwise = [n for n, m in model.named_modules() if getattr(m, "groups", 1) > 1]
    assert depthwise and not names & set(depthwise)
    small = factorize(model, 0.25, (1, 28, 28))
    for name, module in small.named_modules():
        if name in depthwise:
            assert isinstance(module, nn.Conv2d) and module.groups > 1


def test_wide_cnn_is_strictly_cheaper_at_quarter_rank() -> None:
    shape = (1, 28, 28)
    model = _sample(cnn, 0, shape, min_depth=3, max_depth=3, widths=(64,), kernels=(3,))
    small = factorize(model, 0.25, shape)
    assert count_flops(small, shape) < count_flops(model, shape)
    assert _params(small) < _params(model)
    # 1 -> 64: 2 * (9 + 64) < 9 * 64; 64 -> 64: 16 * (576 + 64) < 576 * 64, so every conv pays
    replaced = [n for n, m in small.named_modules() if isinstance(m, LowRank)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(convs) <= set(replaced)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(20, 30),
        nn.Linear(30, 20, bias=False),
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Conv2d(4, 6, (3, 5), padding=(2, 1), dilation=(2, 1), bias=False),
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv1d(5, 7, 5, stride=2, padding=2),
    ],
    ids=repr,
)
def test_full_rank_pair_reproduces_the_layer(layer) -> None:
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    pair = factorize_layer(layer, full)
    if isinstance(layer, nn.Linear):
        x = torch.randn(2, layer.in_features)
    elif isinstance(layer, nn.Conv2d):
        x = torch.randn(2, layer.in_channels, 11, 9)
    else:
        x = torch.randn(2, layer.in_channels, 9)
    with torch.no_grad():
        torch.testing.assert_close(pair(x), layer(x), atol=1e-4, rtol=0)
    assert pair[0].lowrank_rank == pair[1].lowrank_rank == full
    assert (pair[1].bias is None) == (layer.bias is None)
    assert pair[0].bias is None


def test_error_decreases_with_rank_as_eckart_young_says() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(48, 64)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    errors = [_rel_error(layer.weight.detach(), factorize_layer(layer, r)) for r in range(1, 49)]
    assert all(a > b for a, b in pairwise(errors)), errors
    assert errors[-1] < 1e-5
    for r, err in enumerate(errors, start=1):
        optimal = float(s[r:].square().sum().sqrt() / s.square().sum().sqrt())
        assert err == pytest.approx(optimal, abs=1e-5)

    conv = nn.Conv2d(6, 16, 3)
    conv_errors = [_rel_error(conv.weight.detach(), factorize_layer(conv, r)) for r in (2, 8, 16)]
    assert conv_errors[0] > conv_errors[1] > conv_errors[2]
    assert conv_errors[2] < 1e-5


def test_low_rank_weight_is_exact_from_its_rank() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(50, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 3) @ torch.randn(3, 50))
    w = layer.weight.detach()
    assert _rel_error(w, factorize_layer(layer, 2)) > 1e-2
    for r in (3, 4, 10, 40):
        assert _rel_error(w, factorize_layer(layer, r)) < 1e-5

    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(40, 5))
    small = factorize(model, 3 / 40, (50,), per_layer={"2": 1.0})  # r = 3 for layer 0
    assert isinstance(small[0], LowRank) and small[0][0].lowrank_rank == 3
    assert isinstance(small[2], nn.Linear)  # ratio 1.0 never pays
    x = torch.randn(4, 50)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("layer", "shape", "eligible"),
    [
        (nn.Linear(256, 256), (256,), True),
        (nn.Linear(1, 10), (1,), False),  # 1 + 10 >= 1 * 10 at rank 1
        (nn.Linear(10, 1), (10,), False),
        (nn.Conv2d(2, 2, 1), (2, 4, 4), False),  # 2 + 2 >= 2 * 2
        (nn.Conv2d(16, 64, 1), (16, 4, 4), True),  # a 1x1 conv pays at rank 1 (80 < 1024)
        (nn.Conv2d(8, 8, 3, groups=8), (8, 4, 4), False),  # depthwise
        (nn.Conv2d(8, 8, 3, groups=2), (8, 4, 4), False),  # grouped
        (nn.Conv1d(4, 16, 3), (4, 10), True),
        (nn.ConvTranspose2d(8, 8, 3), (8, 4, 4), False),  # not a supported type
    ],
    ids=repr,
)
def test_eligibility_rule(layer, shape, eligible) -> None:
    assert eligible_layers(layer, shape) == ([""] if eligible else [])


def test_rule_matches_rank_and_full_ratio_keeps_layer() -> None:
    # Linear(256, 256): r * 512 < 65536 iff r < 128, i.e. ratio < 0.5
    layer = nn.Linear(256, 256)
    assert isinstance(factorize(layer, 0.49, (256,)), LowRank)
    assert isinstance(factorize(layer, 0.5, (256,)), nn.Linear)
    assert isinstance(factorize(layer, 0.9, (256,)), nn.Linear)
    pair = factorize(layer, 0.25, (256,))
    assert isinstance(pair, LowRank) and pair[0].lowrank_rank == 64
    assert pair[0].weight.shape == (64, 256) and pair[1].weight.shape == (256, 64)
    assert repr(pair) == "LowRank(Linear 256->256, rank=64)"
    assert factorize(nn.Linear(8, 100), 0.01, (8,))[0].lowrank_rank == 1  # max(1, round(0.08))


def test_uncalled_and_attention_layers_are_left_alone() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.used = nn.Linear(32, 32)
            self.unused = nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(self.attn(x, x, x)[0])

    net = Net().eval()
    assert eligible_layers(net, (5, 32)) == ["used"]
    small = factorize(net, 0.25, (5, 32))
    assert isinstance(small.used, LowRank)
    assert type(small.unused) is nn.Linear
    assert type(small.attn.out_proj) is not LowRank
    assert small(torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_shared_layer_becomes_one_shared_pair() -> None:
    shared = nn.Linear(64, 64)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    small = factorize(model, 0.25, (64,))
    assert isinstance(small[0], LowRank) and small[0] is small[2]
    assert small[0][0].weight.shape == (16, 64)


def test_per_layer_overrides_and_bad_input() -> None:
    shape = (1, 8, 8)
    model = _sample(mlp, 0, shape, min_depth=2, max_depth=2, widths=(64,))
    names = eligible_layers(model, shape)
    assert names == ["1", "3", "5"]
    small = factorize(model, 0.25, shape, per_layer={"1": 0.1, "3": 0.5})
    assert small[1][0].lowrank_rank == 6  # round(0.1 * 64)
    assert type(small[3]) is nn.Linear  # r = 32 does not pay: 32 * (64 + 64) == 64 * 64
    assert small[5][0].lowrank_rank == 2  # round(0.25 * 10), the rank argument

    with pytest.raises(ValueError, match="per_layer keys"):
        factorize(model, 0.5, shape, per_layer={"nope": 0.5})
    with pytest.raises(ValueError, match="per_layer keys"):
        factorize(model, 0.5, shape, per_layer={"0": 0.5})  # the Flatten
    for bad in (0, 0.0, 1.5, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="ratio in"):
            factorize(model, bad, shape)
    with pytest.raises(ValueError, match="ratio in"):
        factorize(model, 0.5, shape, per_layer={"1": 2.0})
    with pytest.raises(ValueError, match="input_shape"):
        factorize(model, 0.5, (0, 8))
    with pytest.raises(ValueError, match="rank must be"):
        factorize_layer(nn.Linear(4, 3), 4)
    with pytest.raises(TypeError, match="grouped"):
        factorize_layer(nn.Conv2d(4, 4, 3, groups=4), 1)


def test_train_mode_is_kept() -> None:
    model = _sample(cnn, 1, (1, 28, 28)).train()
    small = factorize(model, 0.25, (1, 28, 28))
    assert all(m.training for m in small.modules())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(("space", "shape"), [*CASES[:3], CASES[3], CASES[4]], ids=_ids)
def test_onnx_export_matches_torch(space, shape) -> None:
    model = _sample(space, 2, shape)
    with torch.no_grad():  # non-trivial BN statistics, so BN folding is exercised too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    small = factorize(model, 0.5, shape)
    assert any(isinstance(m, LowRank) for m in small.modules())
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = small(x).numpy()
    sess = session(to_onnx(small, shape))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_round_to_rounds_ranks_up() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    out = factorize(model, 0.1, (1, 28, 28), round_to=8)
    ranks = [m.lowrank_rank for m in out.modules() if hasattr(m, "lowrank_rank")]
    assert ranks and all(r % 8 == 0 for r in ranks), ranks
    with pytest.raises(ValueError, match="round_to"):
        factorize(model, 0.1, (1, 28, 28), round_to=0)
