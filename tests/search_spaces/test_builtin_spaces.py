"""Checks specific to the built-in spaces: cnn, mobilenet, mlp."""

from __future__ import annotations

import re
from collections.abc import Callable

import optuna
import pytest
import torch
from torch import nn

from search_spaces.cnn import cnn
from search_spaces.mlp import mlp
from search_spaces.mobilenet import InvertedResidual, SqueezeExcite, mobilenet

optuna.logging.set_verbosity(optuna.logging.WARNING)

NUM_CLASSES = 7
SEEDS = (0, 1, 2, 3)
CASES = [
    (space, shape)
    for space, shapes in (
        (cnn, [(1, 8, 8), (1, 28, 28), (1, 40)]),
        (mobilenet, [(1, 8, 8), (1, 28, 28)]),
        (mlp, [(1, 8, 8), (1, 28, 28), (1, 40)]),
    )
    for shape in shapes
]
PARAM_NAME = re.compile(r"^[a-z]+(_[a-z]+)*(_s?\d+)?$")


def _sample(space: Callable[..., nn.Module], seed: int, **kwargs: object):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return trial, space(trial, **kwargs)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("space", "shape"), CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_sample_forward_rebuild_backward(space, shape, seed) -> None:
    torch.manual_seed(seed)
    args = {"input_shape": shape, "num_classes": NUM_CLASSES}
    trial, model = _sample(space, seed, **args)

    assert trial.params, "the space sampled nothing"
    assert all(PARAM_NAME.match(name) for name in trial.params), trial.params

    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)

    fixed = optuna.trial.FixedTrial(trial.params)
    rebuilt = space(fixed, **args)
    assert fixed.params == trial.params  # same params consumed, none missing or extra
    assert _shapes(rebuilt) == _shapes(model)
    assert rebuilt(x).shape == (2, NUM_CLASSES)

    out.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"


@pytest.mark.parametrize("space", [cnn, mobilenet, mlp], ids=lambda f: f.__name__)
def test_seeds_explore_different_architectures(space) -> None:
    args = {"input_shape": (1, 28, 28), "num_classes": NUM_CLASSES}
    keys = {tuple(sorted(_sample(space, seed, **args)[0].params.items())) for seed in range(6)}
    assert len(keys) > 1


# --- bad arguments ------------------------------------------------------------------------------

BAD_ARGS = [
    (cnn, (1, 8, 8), {"min_depth": 5, "max_depth": 3}, "min_depth"),
    (cnn, (1, 8, 8), {"widths": ()}, "widths"),
    (cnn, (1, 8, 8), {"widths": (8, 0)}, "widths"),
    (cnn, (1, 8, 8), {"kernels": (3, 4)}, "kernels"),
    (cnn, (1, 8, 8), {"batch_norm": "maybe"}, "batch_norm"),
    (cnn, (1, 8, 8), {"pools": ("max", "median")}, "pools"),
    (cnn, (1, 2, 8, 8), {}, "input_shape"),
    (cnn, (1, 8, 8), {"num_classes": 0}, "num_classes"),
    (cnn, (1, 8, 8), {"heads": ("gap", "dense")}, "heads"),
    (cnn, (1, 8, 8), {"min_depth": 0}, "min_depth"),  # depth 0 needs a flatten head
    (cnn, (1, 8, 8), {"heads": "flatten", "hidden": (32, -1)}, "hidden"),
    (mobilenet, (1, 40), {}, "input_shape"),
    (mobilenet, (1, 8, 8), {"min_depth": 4}, "min_depth"),
    (mobilenet, (1, 8, 8), {"stages": 6}, "stages"),
    (mobilenet, (1, 8, 8), {"kernels": (3, 6)}, "kernels"),
    (mobilenet, (1, 8, 8), {"expansions": ()}, "expansions"),
    (mobilenet, (1, 8, 8), {"width_mults": (0.5, -1.0)}, "width_mults"),
    (mobilenet, (1, 8, 8), {"se": "yes"}, "se"),
    (mobilenet, (1, 8, 8), {"head_mult": 0}, "head_mult"),
    (mlp, (1, 8, 8), {"min_depth": 3, "max_depth": 1}, "min_depth"),
    (mlp, (1, 8, 8), {"widths": []}, "widths"),
    (mlp, (1, 8, 8), {"widths": 100}, "widths"),
    (mlp, (1, 8, 8), {"dropout": 1.0}, "dropout"),
    (mlp, (1, 8, 8), {"dropout": [0.0, -0.1]}, "dropout"),
    (mlp, (), {}, "input_shape"),
]


@pytest.mark.parametrize(("space", "shape", "kwargs", "argument"), BAD_ARGS)
def test_bad_args_raise_value_error_naming_the_argument(space, shape, kwargs, argument) -> None:
    all_kwargs = {"input_shape": shape, "num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=rf"^{space.__name__}: {argument}") as info:
        _sample(space, 0, **all_kwargs)
    assert "got" in str(info.value)  # states the value, not only the rule


# --- cnn ---------------------------------------------------------------------------------------


def test_cnn_picks_conv_type_by_input_rank() -> None:
    _, model_2d = _sample(cnn, 0, input_shape=(1, 8, 8), num_classes=3)
    _, model_1d = _sample(cnn, 0, input_shape=(1, 40), num_classes=3)
    assert any(isinstance(m, nn.Conv2d) for m in model_2d.modules())
    assert not any(isinstance(m, nn.Conv1d) for m in model_2d.modules())
    assert any(isinstance(m, nn.Conv1d) for m in model_1d.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in model_1d.modules())


@pytest.mark.parametrize(("shape", "max_pools"), [((1, 8, 8), 2), ((1, 28, 28), 3), ((1, 40), 4)])
def test_cnn_pools_only_while_the_map_is_large_enough(shape, max_pools) -> None:
    trial, model = _sample(
        cnn, 0, input_shape=shape, num_classes=3, min_depth=6, max_depth=6, pools=("max",)
    )
    pools = [m for m in model.modules() if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d))]
    assert len(pools) == max_pools
    assert sum(name.startswith("pool_") for name in trial.params) == max_pools
    feature_map = model.features(torch.randn(1, *shape))
    assert min(feature_map.shape[2:]) >= 2


def test_cnn_narrowed_space_is_respected() -> None:
    trial, model = _sample(
        cnn,
        0,
        input_shape=(1, 28, 28),
        num_classes=3,
        min_depth=2,
        max_depth=2,
        widths=(12,),
        kernels=(5,),
        pools=("none",),
        batch_norm=False,
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.bias is not None) for c in convs] == [
        (12, (5, 5), True)
    ] * 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    assert "batch_norm" not in trial.params


def test_cnn_batch_norm_follows_bias_free_convs_and_can_be_searched() -> None:
    _, model = _sample(cnn, 0, input_shape=(1, 8, 8), num_classes=3, batch_norm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) and all(c.bias is None for c in convs)

    args = {"input_shape": (1, 8, 8), "num_classes": 3, "batch_norm": "search"}
    seen = {_sample(cnn, s, **args)[0].params["batch_norm"] for s in range(8)}
    assert seen == {True, False}


def test_cnn_flatten_head_gives_lenet_style_nets_and_mlps() -> None:
    args = {"input_shape": (1, 28, 28), "num_classes": 10, "min_depth": 0, "max_depth": 2}
    args |= {"heads": ("gap", "flatten"), "hidden": (0, 32), "pools": ("max",), "widths": (8,)}
    seen = set()
    for seed in range(40):
        trial, model = _sample(cnn, seed, **args)
        depth, hidden = trial.params["depth"], trial.params.get("hidden")
        head = trial.params.get("head", "flatten")
        seen.add((depth > 0, head, hidden))
        linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
        if head == "gap":
            assert "hidden" not in trial.params and len(linears) == 1
            assert linears[0].in_features == 8
            continue
        side = 28 // 2**depth
        features = 784 if depth == 0 else 8 * side * side
        assert linears[0].in_features == features
        assert [lin.out_features for lin in linears] == ([32, 10] if hidden else [10])
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (False, "flatten", 32) in seen  # an MLP 784-32-10
    assert (True, "flatten", 0) in seen and (True, "gap", None) in seen
    assert all(head == "flatten" for conv, head, _ in seen if not conv)  # depth 0: no head param


# --- mobilenet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_mobilenet_blocks_are_inverted_residuals_with_depthwise_convs(seed) -> None:
    _, model = _sample(mobilenet, seed, input_shape=(1, 28, 28), num_classes=3, se=True)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert blocks

    for block in blocks:
        depthwise = block.depthwise[0]
        assert isinstance(depthwise, nn.Conv2d)
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels > 1
        assert isinstance(block.se, SqueezeExcite)
        assert not isinstance(block.project[-1], nn.ReLU6)  # linear bottleneck

    residual = [b for b in blocks if b.use_residual]
    assert residual  # the first block of stage 0 always qualifies
    block = residual[0].eval()
    x = torch.randn(2, block.project[0].out_channels, 7, 7)  # in == out for a residual block
    branch = block.project(block.se(block.depthwise(block.expand(x))))
    torch.testing.assert_close(block(x), x + branch)


def test_mobilenet_se_switch() -> None:
    for se in (True, False):
        trial, model = _sample(mobilenet, 0, input_shape=(1, 8, 8), num_classes=3, se=se)
        assert any(isinstance(m, SqueezeExcite) for m in model.modules()) is se
        assert "se" not in trial.params
        gates = [m for m in model.modules() if isinstance(m, nn.Hardsigmoid)]
        assert bool(gates) is se

    seen = {
        _sample(mobilenet, s, input_shape=(1, 8, 8), num_classes=3)[0].params["se"]
        for s in range(8)
    }
    assert seen == {True, False}


@pytest.mark.parametrize(("shape", "final_side"), [((1, 8, 8), 4), ((1, 28, 28), 7)])
def test_mobilenet_downsamples_but_not_below_four(shape, final_side) -> None:
    for seed in SEEDS:
        _, model = _sample(mobilenet, seed, input_shape=shape, num_classes=3, min_depth=1)
        feature_map = model.blocks(model.stem(torch.randn(1, *shape)))
        assert feature_map.shape[2:] == (final_side, final_side)


def test_mobilenet_widths_are_multiples_of_four() -> None:
    for seed in range(6):
        trial, model = _sample(mobilenet, seed, input_shape=(1, 28, 28), num_classes=3)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
        assert all(c.out_channels % 4 == 0 and c.out_channels >= 4 for c in convs), trial.params


# --- mlp ---------------------------------------------------------------------------------------


def test_mlp_layers_follow_the_params() -> None:
    trial, model = _sample(mlp, 3, input_shape=(1, 28, 28), num_classes=10, dropout=0.25)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    depth = trial.params["depth"]
    assert len(linears) == depth + 1
    assert linears[0].in_features == 28 * 28
    assert [lin.out_features for lin in linears] == [
        trial.params[f"width_{i}"] for i in range(depth)
    ] + [10]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == depth and all(d.p == 0.25 for d in dropouts)


def test_mlp_dropout_is_off_by_default_and_searchable_from_a_list() -> None:
    trial, model = _sample(mlp, 0, input_shape=(1, 40), num_classes=10)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert "dropout" not in trial.params

    trial, _ = _sample(mlp, 0, input_shape=(1, 40), num_classes=10, dropout=[0.1, 0.5])
    assert trial.params["dropout"] in (0.1, 0.5)
