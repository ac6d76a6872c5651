"""objectives: a shared suite over every registered objective, then checks specific to each."""

from __future__ import annotations

import math
import re

import optuna
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas import onnx_utils
from nas.data import Split
from nas.errors import NasError
from nas.space import build_model, resolve_space
from objectives import (
    OBJECTIVES,
    MeasureContext,
    Objective,
    count_flops,
    count_params,
    model_size_bytes,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPE = (1, 8, 8)
NUM_CLASSES = 10
FAST_LATENCY = {"warmup": 1, "repeats": 3}


def _model(space: str, seed: int = 0, **args: object) -> nn.Module:
    torch.manual_seed(seed)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    return build_model(
        resolve_space(space), trial, input_shape=SHAPE, num_classes=NUM_CLASSES, args=args
    )


def _split(n: int = 32, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(
        torch.rand(n, *SHAPE, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)
    )


# --- shared suite --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_contract(name: str) -> None:
    obj = OBJECTIVES.get(name)
    assert isinstance(obj, Objective)
    assert obj.name == name
    assert obj.direction in ("maximize", "minimize")
    assert isinstance(obj.needs_training, bool)
    assert isinstance(obj.description, str) and obj.description


@pytest.mark.parametrize("space", ["mlp", "cnn"])
@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_measures_a_finite_float(name: str, space: str) -> None:
    model = _model(space)
    ctx = MeasureContext(input_shape=SHAPE, split=_split(), args=FAST_LATENCY)
    value = OBJECTIVES.get(name).measure(model, ctx)
    assert isinstance(value, float)
    assert math.isfinite(value)
    assert value >= 0


@pytest.mark.parametrize("space", ["mlp", "cnn"])
@pytest.mark.parametrize("name", [n for n in OBJECTIVES.names() if n not in ("latency_ms",)])
def test_objective_is_deterministic_and_keeps_mode(name: str, space: str) -> None:
    model = _model(space).train()
    ctx = MeasureContext(input_shape=SHAPE, split=_split())
    obj = OBJECTIVES.get(name)
    assert obj.measure(model, ctx) == obj.measure(model, ctx)
    assert model.training


def test_builtin_objectives_are_registered() -> None:
    assert {"accuracy", "flops", "params", "size_bytes", "latency_ms"} <= set(OBJECTIVES.names())
    with pytest.raises(NasError, match="unknown objective 'speed'"):
        OBJECTIVES.get("speed")


def test_cheap_objectives_do_not_need_training() -> None:
    assert OBJECTIVES.get("accuracy").needs_training
    for name in ("flops", "params", "size_bytes", "latency_ms"):
        assert not OBJECTIVES.get(name).needs_training


# --- flops ---------------------------------------------------------------------------------------


def test_flops_of_linear() -> None:
    assert count_flops(nn.Linear(10, 5), (10,)) == 50  # bias is not counted


def test_flops_of_conv() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, (3, 8, 8)) == (8 * 8 * 8) * (3 * 3 * 3)
    strided = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    assert count_flops(strided, (3, 8, 8)) == (4 * 4 * 4) * (3 * 3 * 3)


def test_flops_do_not_count_batch_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    assert count_flops(model, (3, 8, 8)) == (8 * 8 * 8) * (3 * 3 * 3)


def _flop_counter_macs_and_pool(model: nn.Module) -> tuple[float, int]:
    """torch's FlopCounterMode MACs (it counts 2 per multiply-add) and the global-pool inputs."""
    pooled: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: pooled.append(inp[0].numel()))
        for m in model.modules()
        if isinstance(m, nn.AdaptiveAvgPool2d)
    ]
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    for h in hooks:
        h.remove()
    return counter.get_total_flops() / 2, sum(pooled)


CNN_PARAMS = {
    "depth": 2,
    "width_0": 8,
    "kernel_0": 3,
    "pool_0": "avg",
    "width_1": 16,
    "kernel_1": 5,
    "pool_1": "max",
}


def _cnn(batch_norm: bool) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        resolve_space("cnn"),
        optuna.trial.FixedTrial(CNN_PARAMS),
        input_shape=SHAPE,
        num_classes=NUM_CLASSES,
        args={"batch_norm": batch_norm},
    )


def test_flops_match_torch_flop_counter_without_bn() -> None:
    model = _cnn(batch_norm=False)
    macs, pool_inputs = _flop_counter_macs_and_pool(model)
    # hand count: conv 8x8x8 outputs * 1*3*3 + 4x4x16 * 8*5*5, linear 16*10
    assert macs == 8 * 8 * 8 * 9 + 4 * 4 * 16 * 8 * 25 + 16 * 10
    # fvcore also counts one flop per input element of the global average pool
    assert count_flops(model, SHAPE) == macs + pool_inputs
    assert pool_inputs == 16 * 2 * 2


def test_flops_match_torch_flop_counter_with_bn() -> None:
    model = _cnn(batch_norm=True)
    macs, pool_inputs = _flop_counter_macs_and_pool(model)
    assert count_flops(model, SHAPE) == macs + pool_inputs


def test_flops_keep_training_mode() -> None:
    model = _cnn(batch_norm=True).train()
    count_flops(model, SHAPE)
    assert model.training


# --- params --------------------------------------------------------------------------------------


def test_params_count() -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
    assert count_params(model) == 10 * 5 + 5 + 5 * 2 + 2
    ctx = MeasureContext(input_shape=(10,))
    assert OBJECTIVES.get("params").measure(model, ctx) == 67.0


def test_params_count_tied_weights_once() -> None:
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert count_params(nn.Sequential(a, b)) == 16


# --- size_bytes ----------------------------------------------------------------------------------


def test_size_bytes_is_four_bytes_per_param_by_default() -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
    assert model_size_bytes(model) == 4 * count_params(model)
    ctx = MeasureContext(input_shape=(10,))
    assert OBJECTIVES.get("size_bytes").measure(model, ctx) == 4.0 * 67


def test_size_bytes_honours_weight_bits() -> None:
    q, fp = nn.Linear(10, 5), nn.Linear(5, 2)
    q.weight_bits = 8
    # 50 weights at 1 byte, 5 biases at 4 (int32 in int8 ONNX), 5 per-channel float32 scales
    assert model_size_bytes(nn.Sequential(q, fp)) == 50 * 1 + 5 * 4 + 5 * 4 + 12 * 4


def test_size_bytes_counts_batchnorm_as_the_export_folds_it() -> None:
    from nas.compress.fusion import fold_bn

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
        nn.BatchNorm1d(3, affine=False, track_running_stats=False),  # not foldable: kept
    )  # fmt: skip
    folded = fold_bn(model)
    assert model_size_bytes(model) == 4 * count_params(folded) < 4 * count_params(model)


def test_size_bytes_rounds_bits_up_to_bytes() -> None:
    layer = nn.Linear(3, 1, bias=False)
    layer.weight_bits = 1
    assert model_size_bytes(layer) == 5  # 3 bits + a 32-bit scale


def test_size_bytes_counts_tied_weights_once() -> None:
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert model_size_bytes(nn.Sequential(a, b)) == 16 * 4


# --- latency_ms ----------------------------------------------------------------------------------


def test_latency_is_positive() -> None:
    ms = OBJECTIVES.get("latency_ms").measure(
        _model("mlp"), MeasureContext(input_shape=SHAPE, args=FAST_LATENCY)
    )
    assert 0 < ms < 1000


def test_latency_respects_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    real_session = onnx_utils.session

    class Recording:
        def __init__(self, sess) -> None:
            self._sess = sess

        def get_inputs(self):
            return self._sess.get_inputs()

        def run(self, outputs, feeds):
            seen.append(next(iter(feeds.values())).shape)
            return self._sess.run(outputs, feeds)

    monkeypatch.setattr(onnx_utils, "session", lambda *a, **k: Recording(real_session(*a, **k)))
    ctx = MeasureContext(input_shape=SHAPE, args={"batch_size": 4, **FAST_LATENCY})
    ms = OBJECTIVES.get("latency_ms").measure(_model("cnn"), ctx)
    assert ms > 0
    assert seen == [(4, *SHAPE)] * (FAST_LATENCY["warmup"] + FAST_LATENCY["repeats"])


# --- accuracy ------------------------------------------------------------------------------------


class AlwaysZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), NUM_CLASSES)
        logits[:, 0] = 1.0
        return logits


@pytest.mark.parametrize(("label", "expected"), [(0, 1.0), (3, 0.0)])
def test_accuracy_of_a_constant_model(label: int, expected: float) -> None:
    split = Split(torch.rand(20, *SHAPE), torch.full((20,), label, dtype=torch.int64))
    ctx = MeasureContext(input_shape=SHAPE, split=split)
    assert OBJECTIVES.get("accuracy").measure(AlwaysZero(), ctx) == expected


def test_accuracy_counts_partially_correct_split() -> None:
    split = Split(torch.rand(8, *SHAPE), torch.tensor([0, 0, 0, 1, 2, 0, 5, 0]))
    ctx = MeasureContext(input_shape=SHAPE, split=split)
    assert OBJECTIVES.get("accuracy").measure(AlwaysZero(), ctx) == 5 / 8


def test_accuracy_needs_a_split() -> None:
    with pytest.raises(NasError, match=re.escape("MeasureContext(split=...)")):
        OBJECTIVES.get("accuracy").measure(AlwaysZero(), MeasureContext(input_shape=SHAPE))


def test_energy_of_a_linear_by_hand() -> None:
    from objectives.energy_uj import energy_uj

    model = nn.Sequential(nn.Linear(10, 5))
    # 50 MACs x 4.6 pJ + 50 fp32 weights from DRAM x 640 pJ + (10 + 5) activations x 5 pJ
    assert energy_uj(model, (10,)) == pytest.approx((50 * 4.6 + 50 * 640 + 15 * 5) / 1e6)
    model[0].weight_bits = 8  # int8: 0.23 pJ MACs, a quarter of the weight and activation traffic
    assert energy_uj(model, (10,)) == pytest.approx((50 * 0.23 + 50 * 160 + 15 * 1.25) / 1e6)
    with torch.no_grad():
        model[0].weight[:, :8] = 0
    model[0].sparse_weight = True  # only the 10 non-zero weights are fetched
    assert energy_uj(model, (10,)) == pytest.approx((50 * 0.23 + 10 * 160 + 15 * 1.25) / 1e6)
