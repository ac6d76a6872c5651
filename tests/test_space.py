"""nas.space: the registry, user spaces, and a shared suite run over every registered space."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nas import onnx_utils
from nas.errors import NasError
from nas.space import build_model, list_spaces, rebuild, resolve_space
from nas.user_code import load_callable
from search_spaces import MODEL_ZOO

optuna.logging.set_verbosity(optuna.logging.WARNING)

NUM_CLASSES = 10
SHAPES = [(1, 8, 8), (1, 28, 28)]
SEEDS = (0, 1, 2)

USER_SPACE = """
from torch import nn


def tiny(trial, *, input_shape, num_classes, hidden_max=8):
    hidden = trial.suggest_int("hidden", 2, hidden_max)
    features = 1
    for s in input_shape:
        features *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def not_a_model(trial, *, input_shape, num_classes):
    return "a string"


def picky(trial, *, input_shape, num_classes):
    raise ValueError("picky: needs a 3-D input")
"""


def _trial(seed: int = 0) -> optuna.trial.Trial:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()


# --- registry ------------------------------------------------------------------------------------


def test_builtin_spaces_are_registered() -> None:
    names = list_spaces()
    assert {"cnn", "mobilenet", "mlp"} <= set(names)
    assert names == sorted(names)


def test_resolve_registered_space() -> None:
    from search_spaces import BUILTIN_SPACES

    for name in ("cnn", "mobilenet", "mlp"):
        assert resolve_space(name) is BUILTIN_SPACES[name]


def test_unknown_space_lists_names() -> None:
    with pytest.raises(NasError) as info:
        resolve_space("resnet")
    msg = str(info.value)
    assert "'resnet'" in msg
    for name in list_spaces():
        assert name in msg


# --- user spaces ---------------------------------------------------------------------------------


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "my.py"
    path.write_text(USER_SPACE)
    return path


def test_user_space_from_file(space_file: Path) -> None:
    space = resolve_space(f"{space_file}:tiny")
    model = build_model(space, _trial(), input_shape=(1, 4, 4), num_classes=3)
    assert model(torch.zeros(5, 1, 4, 4)).shape == (5, 3)


def test_user_space_args_and_rebuild(space_file: Path) -> None:
    space = resolve_space(f"{space_file}:tiny")
    trial = _trial(1)
    model = build_model(space, trial, input_shape=(6,), num_classes=2, args={"hidden_max": 3})
    assert 2 <= trial.params["hidden"] <= 3
    again = rebuild(space, trial.params, input_shape=(6,), num_classes=2, args={"hidden_max": 3})
    assert again[1].out_features == model[1].out_features == trial.params["hidden"]


def test_user_space_from_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nas_test_user_space_mod.py").write_text(USER_SPACE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nas_test_user_space_mod", raising=False)
    space = resolve_space("nas_test_user_space_mod:tiny")
    monkeypatch.delitem(sys.modules, "nas_test_user_space_mod")  # unloaded again at teardown
    assert space.__module__ == "nas_test_user_space_mod"
    model = build_model(space, _trial(), input_shape=(1, 4, 4), num_classes=3)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


def test_user_space_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.py"
    with pytest.raises(NasError) as info:
        resolve_space(f"{path}:fn")
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_user_space_file_raises_on_import(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("x = 1 / 0\n")
    with pytest.raises(NasError) as info:
        resolve_space(f"{path}:fn")
    msg = str(info.value)
    assert "ZeroDivisionError" in msg
    assert "on import" in msg
    assert str(path) in msg


def test_user_space_file_with_missing_import(tmp_path: Path) -> None:
    path = tmp_path / "needs.py"
    path.write_text("import nas_test_no_such_package\n")
    with pytest.raises(NasError, match="cannot import 'nas_test_no_such_package'"):
        resolve_space(f"{path}:fn")


def test_user_space_missing_function(space_file: Path) -> None:
    with pytest.raises(NasError) as info:
        resolve_space(f"{space_file}:nope")
    assert "no function 'nope'" in str(info.value)


def test_user_space_missing_module() -> None:
    with pytest.raises(NasError, match="cannot import 'nas_test_no_such_module'"):
        resolve_space("nas_test_no_such_module:fn")


@pytest.mark.parametrize("spec", [":fn", "file.py:", "module:"])
def test_malformed_spec(spec: str) -> None:
    with pytest.raises(NasError, match=re.escape("path/file.py:function")):
        load_callable(spec, "space")


def test_space_returning_non_module(space_file: Path) -> None:
    space = resolve_space(f"{space_file}:not_a_model")
    with pytest.raises(NasError, match=re.escape("not a torch.nn.Module")):
        build_model(space, _trial(), input_shape=(4,), num_classes=2)


def test_space_value_error_becomes_nas_error(space_file: Path) -> None:
    space = resolve_space(f"{space_file}:picky")
    with pytest.raises(NasError, match="picky: needs a 3-D input"):
        build_model(space, _trial(), input_shape=(4,), num_classes=2)


def test_builtin_space_bad_args_become_nas_error() -> None:
    with pytest.raises(NasError, match="min_depth"):
        build_model(
            resolve_space("mlp"),
            _trial(),
            input_shape=(4,),
            num_classes=2,
            args={"min_depth": 3, "max_depth": 1},
        )


# --- shared suite over every registered space ----------------------------------------------------


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _randomise_norm_stats(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so the ONNX export's BN folding is really checked."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", [s for s in list_spaces() if s not in MODEL_ZOO])
def test_registered_space(name: str, shape: tuple[int, ...]) -> None:
    space = resolve_space(name)
    for seed in SEEDS:
        torch.manual_seed(seed)
        trial = _trial(seed)
        model = build_model(space, trial, input_shape=shape, num_classes=NUM_CLASSES).eval()
        assert trial.params, f"{name} sampled nothing"
        _randomise_norm_stats(model, seed)
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, NUM_CLASSES)
        assert torch.isfinite(out).all()

        again = rebuild(space, trial.params, input_shape=shape, num_classes=NUM_CLASSES)
        assert _shapes(again) == _shapes(model)

        sess = onnx_utils.session(onnx_utils.to_onnx(model, shape))
        assert not model.training  # export restores the mode
        (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        np.testing.assert_allclose(onnx_out, out.numpy(), atol=1e-4, rtol=1e-4)
