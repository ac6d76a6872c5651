"""Parameter sharing across depth in the mobilenet space."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch

from nas.compress import Context, get, list_techniques
from nas.onnx_utils import session, to_onnx
from objectives import count_flops, count_params, model_size_bytes
from search_spaces.mobilenet import mobilenet
from tests.conftest import MODERATE_KNOBS

SHAPE = (1, 28, 28)
PARAMS = {"width_mult": 1.0, "se": True}
PARAMS |= {f"depth_s{s}": 3 for s in range(3)} | {f"expand_s{s}": 4 for s in range(3)}
PARAMS |= {f"kernel_s{s}": 3 for s in range(3)}


def _model(share: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    trial = optuna.trial.FixedTrial(PARAMS)
    return mobilenet(trial, input_shape=SHAPE, num_classes=10, share=share).eval()


def _tied(model: torch.nn.Module) -> list[int]:
    b = model.blocks
    return [i for i in range(len(b)) if any(b[i] is b[j] for j in range(i))]


def test_residual_blocks_of_a_stage_share_one_set_of_weights() -> None:
    plain, shared = _model(False), _model(True)
    # stage 0: blocks 0-2 all residual; stages 1, 2: the stride-2 block, then 2 tied ones
    assert _tied(shared) == [1, 2, 5, 8] and _tied(plain) == []
    assert count_flops(shared, SHAPE) == count_flops(plain, SHAPE)  # the compute is the same
    assert count_params(shared) < 0.7 * count_params(plain)  # weights counted once
    assert model_size_bytes(shared) < 0.7 * model_size_bytes(plain)
    # the export keeps one copy: a smaller ONNX file that computes the same outputs
    onnx_shared = to_onnx(shared, SHAPE)
    assert len(onnx_shared) < 0.75 * len(to_onnx(plain, SHAPE))
    x = torch.rand(2, *SHAPE)
    y = session(onnx_shared).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(y), shared(x), atol=1e-4, rtol=1e-4)


def test_weights_file_keeps_the_sharing(tmp_path) -> None:
    from safetensors.torch import save_model

    from nas.weights import load_weights

    shared = _model(True)
    save_model(shared, str(tmp_path / "shared.safetensors"))
    save_model(_model(False), str(tmp_path / "plain.safetensors"))
    small, big = (tmp_path / f"{n}.safetensors" for n in ("shared", "plain"))
    assert small.stat().st_size < 0.75 * big.stat().st_size
    with torch.no_grad():
        for p in shared.parameters():
            p.add_(1.0)
    again = load_weights(_model(True), small)
    assert _tied(again) == [1, 2, 5, 8]
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(again(x), _model(True)(x))


@pytest.mark.parametrize("technique", [t.name for t in list_techniques()])
def test_techniques_keep_the_sharing(technique: str) -> None:
    model = _model(True)
    if get(technique).not_applicable(model, SHAPE) is not None:
        return  # e.g. head_pruning: no attention layer
    knobs = MODERATE_KNOBS[technique]
    x = torch.rand(16, *SHAPE)
    out = get(technique).apply(copy.deepcopy(model), knobs, Context(SHAPE, x))
    assert _tied(out) == [1, 2, 5, 8]
    assert out.eval()(x[:2]).shape == (2, 10)


def test_share_is_a_search_parameter_and_validated() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(8):
        t = study.ask()
        mobilenet(t, input_shape=SHAPE, num_classes=10, share="search")
        seen.add(t.params["share"])
    assert seen == {True, False}
    with pytest.raises(ValueError, match="share must be True, False or 'search'"):
        mobilenet(optuna.trial.FixedTrial(PARAMS), input_shape=SHAPE, num_classes=10, share="yes")
