"""``train.device`` / ``precision`` / ``channels_last``: the CPU paths always run; the CUDA ones
carry the ``gpu`` marker and are skipped cleanly without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.config import TrainConfig
from nas.data import Split
from nas.errors import NasError
from nas.search._local import pin_gpu
from nas.train import evaluate, model_device, resolve_device, train


def _data(n: int = 64) -> Split:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 8, 8, generator=g) + y[:, None, None, None].float()
    return Split(x, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_training_with_precision_and_layout(precision: str, channels_last: bool) -> None:
    model, data = _model(), _data()
    cfg = TrainConfig(
        epochs=20,
        batch_size=16,
        lr=0.02,
        device="cpu",
        precision=precision,
        channels_last=channels_last,
    )
    stats = train(model, data, cfg)
    assert stats["device"] == "cpu" and stats["precision"] == precision
    assert model_device(model).type == "cpu" and not model.training
    assert model[0].weight.is_contiguous()  # handed back in the default layout
    assert evaluate(model, data) > 0.9


def test_cpu_fp16_uses_a_grad_scaler_and_learns() -> None:
    model, data = _model(), _data()
    train(
        model, data, TrainConfig(epochs=20, batch_size=16, lr=0.02, device="cpu", precision="fp16")
    )
    assert evaluate(model, data) > 0.9


def test_devices_that_are_not_here_are_one_line() -> None:
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(NasError, match="no CUDA GPU"):
            resolve_device("cuda:1")
        assert resolve_device("auto").type == "cpu"
        assert pin_gpu(3) is None
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="tpu")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training(precision: str) -> None:
    model, data = _model(), _data()
    cfg = TrainConfig(
        epochs=20, batch_size=16, lr=0.02, device="cuda", precision=precision, channels_last=True
    )
    stats = train(model, data, cfg)
    assert stats["device"].startswith("cuda:")
    assert model_device(model).type == "cpu"  # compression and export work on the CPU
    assert evaluate(model, data) > 0.9
    assert evaluate(model.cuda(), data) > 0.9  # evaluation follows the model's device


@pytest.mark.gpu
def test_workers_are_pinned_round_robin() -> None:
    n = torch.cuda.device_count()
    assert [pin_gpu(i) for i in range(2 * n)] == list(range(n)) * 2
    pin_gpu(0)


@pytest.mark.gpu
def test_latency_on_the_gpu_says_where() -> None:
    from objectives import OBJECTIVES, MeasureContext

    lat = OBJECTIVES.get("latency_ms")
    args = {"device": "cuda", "batch_size": 8, "repeats": 5}
    ms = lat.measure(_model().eval(), MeasureContext((3, 8, 8), None, args))
    assert ms > 0 and "cuda" in lat.measured_on(args)
