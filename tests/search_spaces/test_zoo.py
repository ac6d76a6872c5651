"""The ``torchvision`` and ``timm`` spaces: family choices, adaptation to the data, weights from
local files only, and bad input as one line."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from nas import onnx_utils
from nas.config import parse_experiment
from nas.errors import NasError
from nas.space import build_model, rebuild, resolve_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
SHAPE = (3, 16, 16)

CASES = [
    ("torchvision", {"model": "resnet18"}, {"depth_s0", "depth_s3"}),
    ("torchvision", {"model": "mobilenet_v2"}, {"width_mult", "expand_s1", "depth_s2"}),
    ("torchvision", {"model": "efficientnet_b0"}, {"width_mult", "depth_mult"}),
    ("torchvision", {"model": "mobilenet_v3_small"}, {"width_mult"}),
    (
        "timm",
        {"model": "vit_tiny_patch16_224", "patch_size": 4, "choices": {"depth": [2, 3]}},
        {"depth"},
    ),
    ("timm", {"model": "resnet18"}, set()),
]


def _build(space: str, args: dict, shape=SHAPE, classes: int = 7, seed: int = 0):
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    model = build_model(
        resolve_space(space), trial, input_shape=shape, num_classes=classes, args=args
    )
    return model.eval(), trial


@pytest.mark.parametrize(("space", "args", "params"), CASES, ids=lambda v: str(v)[:40])
def test_zoo_models_build_search_and_export(space: str, args: dict, params: set) -> None:
    model, trial = _build(space, args)
    assert params <= set(trial.params)
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    again = rebuild(resolve_space(space), trial.params, input_shape=SHAPE, num_classes=7, args=args)
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    sess = onnx_utils.session(onnx_utils.to_onnx(model, SHAPE))
    (y,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(y, out.numpy(), atol=1e-4, rtol=1e-3)


def test_cifar_stem_and_gray_input() -> None:
    model, _ = _build("torchvision", {"model": "resnet18"}, shape=(1, 16, 16))
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    big, _ = _build("torchvision", {"model": "resnet18", "stem": "imagenet"}, shape=(3, 96, 96))
    assert big.conv1.stride == (2, 2) and isinstance(big.maxpool, nn.MaxPool2d)


def test_vit_patch_embedding_keeps_its_stride() -> None:
    model, _ = _build("timm", {"model": "vit_tiny_patch16_224", "patch_size": 4})
    assert model.patch_embed.proj.stride == (4, 4)


def test_search_false_builds_the_published_architecture() -> None:
    model, trial = _build("torchvision", {"model": "resnet18", "search": False})
    assert trial.params == {} and [len(model.layer1), len(model.layer4)] == [2, 2]


@pytest.mark.parametrize(
    ("space", "args", "needle"),
    [
        ("torchvision", {"model": "resnet19"}, "closest: resnet18"),
        ("timm", {"model": "vit_tiny_patch16"}, "vit_tiny_patch16_224"),
        ("torchvision", {"model": "resnet18", "weights": "default"}, "nothing downloads"),
        ("timm", {"model": "resnet18", "weights": "default"}, "nothing downloads"),
        ("torchvision", {"model": "resnet18", "weights": "/no/such.pth"}, "is not a file"),
        (
            "torchvision",
            {"model": "resnet18", "weights": "default", "choices": {"zero_init_residual": [1]}},
            "weights fix the architecture",
        ),
        ("torchvision", {"model": "vgg11", "stem": "imagenet"}, "too small"),
        ("timm", {"model": "resnet18", "bogus_arg": 3}, "does not take these args"),
    ],
    ids=["tv-name", "timm-name", "tv-offline", "timm-offline", "path", "choices", "small", "arg"],
)
def test_bad_zoo_input_is_one_line(space: str, args: dict, needle: str) -> None:
    with pytest.raises(NasError) as info:
        _build(space, args)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_weights_file_loads_and_the_head_follows_the_classes(tmp_path) -> None:
    args = {"model": "mobilenet_v3_small", "search": False}
    trained, _ = _build("torchvision", args, classes=7)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": trained.state_dict()}, path)
    same, _ = _build("torchvision", {"model": "mobilenet_v3_small", "weights": str(path)})
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(same(x), trained(x))
    other, _ = _build(
        "torchvision", {"model": "mobilenet_v3_small", "weights": str(path)}, classes=4
    )
    assert other.classifier[-1].out_features == 4
    for name in ("features.0.0.weight", "features.3.block.0.0.weight"):
        torch.testing.assert_close(other.state_dict()[name], trained.state_dict()[name])


def test_weights_of_another_architecture_are_refused(tmp_path) -> None:
    small, _ = _build("torchvision", {"model": "mobilenet_v3_small", "search": False})
    path = tmp_path / "ckpt.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    with pytest.raises(NasError, match="do not fit this model"):
        _build("torchvision", {"model": "resnet18", "weights": str(path)})


def test_timm_weights_file(tmp_path) -> None:
    args = {"model": "vit_tiny_patch16_224", "patch_size": 4, "depth": 2}
    trained, _ = _build("timm", args)
    path = tmp_path / "vit.pth"
    torch.save(trained.state_dict(), path)
    again, _ = _build("timm", {**args, "weights": str(path)})
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(again(x), trained(x))


def test_base_model_names_a_zoo_model_and_checkpoint() -> None:
    exp = parse_experiment(
        {
            "base_model": {"torchvision": "resnet18", "checkpoint": "m.pth"},
            "objectives": ["accuracy"],
        }
    )
    assert exp.space.name == "torchvision"
    assert exp.space.args == {"model": "resnet18", "weights": "m.pth"}
    timm = parse_experiment(
        {
            "base_model": {"timm": "vit_tiny_patch16_224", "args": {"patch_size": 4}},
            "objectives": ["accuracy"],
        }
    )
    assert timm.space.args == {
        "model": "vit_tiny_patch16_224",
        "weights": "default",
        "patch_size": 4,
    }
    with pytest.raises(NasError, match="torchvision: NAME, checkpoint: FILE"):
        parse_experiment({"base_model": {"keras": "x"}, "objectives": ["accuracy"]})
