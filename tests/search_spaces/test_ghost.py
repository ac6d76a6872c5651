"""Ghost modules as a block choice of the cnn and mobilenet spaces."""

from __future__ import annotations

import copy

import numpy as np
import optuna
import pytest
import torch

from nas.compress import Context, get, list_techniques
from nas.onnx_utils import session, to_onnx
from objectives import count_flops, count_params
from search_spaces.cnn import cnn
from search_spaces.ghost import GhostBottleneck, GhostModule
from search_spaces.mobilenet import mobilenet
from tests.conftest import MODERATE_KNOBS

SHAPE = (1, 28, 28)
CNN = {"depth": 3, "batch_norm": True}
CNN |= {f"width_{i}": 32 for i in range(3)} | {f"kernel_{i}": 3 for i in range(3)}
CNN |= {"pool_0": "max", "pool_1": "max", "pool_2": "none"}
MOBILE = {"width_mult": 1.0, "se": False}
MOBILE |= {f"depth_s{s}": 2 for s in range(3)} | {f"expand_s{s}": 4 for s in range(3)}
MOBILE |= {f"kernel_s{s}": 3 for s in range(3)}


def _cnn(block: str) -> torch.nn.Module:
    params = CNN | {f"block_{i}": block for i in range(3)}
    return cnn(
        optuna.trial.FixedTrial(params),
        input_shape=SHAPE,
        num_classes=10,
        blocks=("conv", "ghost"),
    ).eval()


def _mobilenet(block: str) -> torch.nn.Module:
    params = MOBILE | {f"block_s{s}": block for s in range(3)}
    return mobilenet(
        optuna.trial.FixedTrial(params),
        input_shape=SHAPE,
        num_classes=10,
        blocks=("inverted", "ghost"),
    ).eval()


def test_ghost_cnn_has_about_half_the_cost_of_the_same_conv_net() -> None:
    conv, ghost = _cnn("conv"), _cnn("ghost")
    assert sum(isinstance(m, GhostModule) for m in ghost.modules()) == 3
    # the 1-channel first layer gains little; the 32 -> 32 layers about half
    assert count_flops(ghost, SHAPE) < 0.6 * count_flops(conv, SHAPE)
    assert count_params(ghost) < 0.6 * count_params(conv)
    x = torch.rand(4, *SHAPE)
    assert ghost(x).shape == (4, 10)
    y = session(to_onnx(ghost, SHAPE)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(y, ghost(x).detach().numpy(), atol=1e-4)


def test_ghost_mobilenet_has_residual_ghost_bottlenecks() -> None:
    model = _mobilenet("ghost")
    blocks = [m for m in model.modules() if isinstance(m, GhostBottleneck)]
    assert len(blocks) == 6 and sum(b.use_residual for b in blocks) >= 3
    assert model(torch.rand(2, *SHAPE)).shape == (2, 10)
    assert count_flops(model, SHAPE) < count_flops(_mobilenet("inverted"), SHAPE)


def test_the_block_is_a_search_parameter() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(8):
        t = study.ask()
        cnn(t, input_shape=SHAPE, num_classes=10, blocks=["conv", "ghost"])
        seen |= {v for k, v in t.params.items() if k.startswith("block_")}
    assert seen == {"conv", "ghost"}
    t = study.ask()
    cnn(t, input_shape=SHAPE, num_classes=10)  # default: no block parameter
    assert not any(k.startswith("block_") for k in t.params)


@pytest.mark.parametrize("technique", [t.name for t in list_techniques()])
@pytest.mark.parametrize("space", ["cnn", "mobilenet"])
def test_every_technique_applies_to_ghost_models(technique: str, space: str) -> None:
    model = _cnn("ghost") if space == "cnn" else _mobilenet("ghost")
    tech = get(technique)
    if tech.not_applicable(model, SHAPE) is not None:
        return  # e.g. tucker/cp: no k x k conv large enough
    knobs = MODERATE_KNOBS[technique]
    x = torch.rand(32, *SHAPE)
    out = tech.apply(copy.deepcopy(model), knobs, Context(SHAPE, x, calib_y=torch.zeros(32).long()))
    out.eval()
    assert out(x[:2]).shape == (2, 10)
    assert count_flops(out, SHAPE) <= count_flops(model, SHAPE)


def test_ghost_bad_input() -> None:
    with pytest.raises(ValueError, match="ghost blocks need even widths"):
        cnn(
            optuna.trial.FixedTrial({}),
            input_shape=SHAPE,
            num_classes=10,
            widths=[7],
            blocks=["ghost"],
        )
    with pytest.raises(ValueError, match="blocks must be a non-empty subset"):
        mobilenet(optuna.trial.FixedTrial({}), input_shape=SHAPE, num_classes=10, blocks=["dense"])


@pytest.mark.parametrize("seed", range(4))
def test_pruning_keeps_a_ghost_modules_halves_tied(seed: int) -> None:
    """A ghost module's cheap half is a depthwise conv of its primary half: removing a primary
    channel removes the cheap one made from it, so both halves keep the same width (whatever
    layer the dependency graph starts the group from)."""
    from nas.compress.filter_pruning_ops import prune_filters

    torch.manual_seed(seed)
    model = _mobilenet("ghost").eval()
    out = prune_filters(model, 0.3, SHAPE)
    assert out(torch.rand(2, *SHAPE)).shape == (2, 10)
    ghosts = [m for m in out.modules() if hasattr(m, "primary") and hasattr(m, "cheap")]
    assert ghosts
    for g in ghosts:
        assert g.primary[0].out_channels == g.cheap[0].out_channels
    assert count_flops(out, SHAPE) < count_flops(model, SHAPE)
