"""The shared suite every registered technique goes through, over every built-in space."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch

from nas.compress import Context, get, list_techniques, parse_compression
from nas.errors import NasError
from nas.onnx_utils import session, to_onnx
from nas.pipeline import finish_sparse
from nas.space import list_spaces, resolve_space
from objectives import count_flops, count_params, model_size_bytes
from search_spaces import MODEL_ZOO

SHAPES = [(1, 28, 28), (1, 8, 8)]
NAMES = [t.name for t in list_techniques()]
# every technique, and again with per_layer: true where it has a per-layer knob
WITH_PER_LAYER = [
    (t.name, per_layer)
    for t in list_techniques()
    for per_layer in (False, True)
    if not per_layer or t.per_layer_knob is not None
]
# (technique, space) pairs that cannot apply, and the reason they give
NOT_APPLICABLE = {
    ("slimming", "mlp"): "BatchNorm",
    ("tucker", "mlp"): "no conv",
    ("cp", "mlp"): "no conv",
    # its only k x k ungrouped conv is the stem on 1-channel images (too small to decompose)
    ("tucker", "mobilenet"): "no conv",
    ("cp", "mobilenet"): "no conv",
    ("tucker", "elastic_mobilenet"): "no conv",
    ("cp", "elastic_mobilenet"): "no conv",
    # transformers: no BN, LayerNorm the channel analysis does not follow, a 1-channel patch conv
    ("slimming", "vit"): "BatchNorm",
    ("filter_pruning", "vit"): "cannot follow channels through module LayerNorm",
    ("tucker", "vit"): "no conv",
    ("cp", "vit"): "no conv",
    # head pruning is for attention layers and transformer MLPs
    ("head_pruning", "cnn"): "no attention layer",
    ("head_pruning", "mobilenet"): "no attention layer",
    ("head_pruning", "mlp"): "no attention layer",
    ("head_pruning", "elastic_mobilenet"): "no attention layer",
    ("head_pruning", "elastic_cnn"): "no attention layer",
}


def _trial(seed: int) -> optuna.trial.Trial:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()


def _candidate(space: str, shape: tuple[int, ...], seed: int, technique: str, per_layer: bool):
    trial = _trial(seed)
    model = resolve_space(space)(trial, input_shape=shape, num_classes=10)
    tech = get(technique)
    raw = {"per_layer": True} if per_layer else {}
    ((_, settings),) = parse_compression({technique: raw})
    return trial, model, tech, settings


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28", "8x8"])
# every architecture space (``pretrained`` samples nothing and needs a model: test_pretrained.py)
@pytest.mark.parametrize("space", [s for s in list_spaces() if s not in MODEL_ZOO])
@pytest.mark.parametrize(("technique", "per_layer"), WITH_PER_LAYER)
def test_technique_on_space(
    technique: str, space: str, shape: tuple[int, ...], per_layer: bool
) -> None:
    for seed in range(2):
        trial, model, tech, settings = _candidate(space, shape, seed, technique, per_layer)
        reason = tech.not_applicable(model, shape)
        if reason is not None:
            assert (technique, space) in NOT_APPLICABLE, reason
            assert NOT_APPLICABLE[technique, space] in reason
            continue
        knobs = tech.sample(trial, settings, model, shape)
        assert knobs is not None
        if per_layer:
            assert isinstance(knobs[tech.per_layer_knob], dict)
            assert set(knobs[tech.per_layer_knob]) == set(tech.eligible(model, shape))
        # BN statistics that are not the identity, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(-1, 1)
        before = copy.deepcopy(model)
        ctx = Context(shape, torch.rand(32, *shape))
        out = tech.apply(model, knobs, ctx)
        for a, b in zip(before.state_dict().values(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b), "apply must not modify its input model"
        out = finish_sparse(out, {technique: knobs})  # what the pipeline does after the fine-tune
        x = torch.rand(4, *shape)
        out.eval()
        assert out(x).shape == (4, 10)
        assert count_flops(out, shape) <= count_flops(before, shape)
        assert count_params(out) <= count_params(before)
        assert model_size_bytes(out) <= model_size_bytes(before)
        est = tech.estimate(before, knobs, ctx)
        assert est(x).shape == (4, 10)
        plain = out
        if technique == "quantize":
            from nas.compress.quant_ops import strip_qat

            plain = strip_qat(out)
        y = session(to_onnx(plain, shape)).run(None, {"input": x.numpy()})[0]
        assert y.shape == (4, 10)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"slimming": {"ratio": [0.0, 1.0]}}, "outside [0, 1)"),
        ({"slimming": {"ratio": [0.6, 0.2]}}, "low <= high"),
        ({"lowrank": {"rank": [0.0, 0.5]}}, "outside (0, 1]"),
        ({"quantize": {"bits": [1, 8]}}, "outside [2, 8]"),
        ({"quantize": {"bits": [4.5, 8]}}, "whole number"),
        ({"quantize": {"bitz": 8}}, "unknown key 'bitz'"),
        ({"lowrank": {"rank": [0.2, 0.5, 0.9]}}, "choices"),
        ({"pruning": {}}, "unknown technique 'pruning'"),
        ({"lowrank": 0.5}, "must be a mapping"),
        ({"quantize": {"finetune": -1}}, "finetune"),
        (
            {"filter_pruning": {"criterion": "l3"}},
            "'l3' is not one of {l1, l2, fpgm, taylor, energy}",
        ),
        ({"filter_pruning": {"criterion": ["l1", 2]}}, "2 is not one of"),
        ({"filter_pruning": {"ratio": [0.2, 1.0]}}, "outside [0, 1)"),
        ({"tucker": {"rank": [0.0, 0.5]}}, "outside (0, 1]"),
        ({"cp": {"rank": 1.5}}, "outside (0, 1]"),
    ],
)
def test_bad_compression_entries(entry: dict, needle: str) -> None:
    with pytest.raises(NasError, match=None) as info:
        parse_compression(entry)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_ranges_choices_fixed_and_optional() -> None:
    ((tech, s),) = parse_compression({"quantize": {"bits": {"choices": [4, 8]}, "optional": True}})
    trial = _trial(0)
    model = resolve_space("cnn")(trial, input_shape=(1, 8, 8), num_classes=10)
    seen = set()
    for seed in range(12):
        t = _trial(seed)
        k = tech.sample(t, s, model, (1, 8, 8))
        seen.add(None if k is None else k["bits"])
    assert seen == {None, 4, 8}
    ((tech, s),) = parse_compression({"lowrank": {"rank": 0.5}})
    t = _trial(0)
    assert tech.sample(t, s, model, (1, 8, 8)) == {"rank": 0.5, "round_to": 8}
    assert t.params == {}  # a fixed knob is not a search parameter


def test_order_is_fixed() -> None:
    got = [
        t.name
        for t, _ in parse_compression(
            {
                "quantize": {},
                "cp": {},
                "lowrank": {},
                "tucker": {},
                "filter_pruning": {},
                "slimming": {},
            }
        )
    ]
    assert got == ["slimming", "filter_pruning", "lowrank", "tucker", "cp", "quantize"]


# knobs at which a structural technique must shrink the model (rounding off: tiny test models)
STRONG = {
    "slimming": {"ratio": 0.5, "strength": 1e-4, "round_to": 1},
    "filter_pruning": {"ratio": 0.5, "criterion": "l1", "round_to": 1},
    "lowrank": {"rank": 0.3, "round_to": 1},
    "tucker": {"rank": 0.3, "round_to": 1},
    "cp": {"rank": 0.3, "round_to": 1},
    "head_pruning": {"heads": 0.5, "neurons": 0.5, "criterion": "l1"},
}
# numeric: fewer weight bytes (size_bytes counts bits), the same multiply-adds. Its int8 ONNX file
# is not always smaller: for a tiny mobilenet the QDQ nodes and per-channel scales outweigh the
# 3 bytes saved per weight (44 kB int8 vs 37 kB fp32 for the test model here)
NUMERIC = {
    "quantize": {"bits": 8},
    "unstructured": {"sparsity": 0.8, "criterion": "magnitude", "schedule": "oneshot"},
    "dns": {"sparsity": 0.8},
    "binarize": {"mode": "ternary", "activations": "float"},
    "ptq": {"calibration": "percentile"},
    "dfq": {},
    "weight_sharing": {"bits": 4},
    "deep_compression": {"sparsity": 0.9, "bits": 4},
}


@pytest.mark.parametrize("space", [s for s in list_spaces() if s not in MODEL_ZOO])
@pytest.mark.parametrize("technique", NAMES)
def test_technique_shrinks_the_exported_onnx_model(technique: str, space: str) -> None:
    """Every structural technique: a smaller exported ONNX file with fewer fvcore multiply-adds;
    a numeric one: fewer weight bytes, and an exported model that runs."""
    from nas.pipeline import as_deployed, int8_onnx

    shape = (1, 28, 28)
    model = resolve_space(space)(_trial(0), input_shape=shape, num_classes=10).eval()
    tech = get(technique)
    if tech.training_only:  # e.g. distill: it trains the model, it does not change it
        assert tech.apply(model, {}, Context(shape)) is model
        return
    assert technique in STRONG or technique in NUMERIC, "add the technique's knobs above"
    reason = tech.not_applicable(model, shape)
    if reason is not None:
        assert (technique, space) in NOT_APPLICABLE, reason
        return
    knobs = STRONG.get(technique) or NUMERIC[technique]
    x = torch.rand(64, *shape)
    ctx = Context(shape, x, calib_y=torch.randint(0, 10, (64,)))
    out = tech.apply(copy.deepcopy(model), knobs, ctx)
    compression = {technique: knobs}
    out = finish_sparse(out, compression)  # what the pipeline does after the fine-tune
    plain = as_deployed(out, compression)
    exported = int8_onnx(plain, compression, ctx) or to_onnx(plain, shape)
    if technique in STRONG:
        assert len(exported) < len(to_onnx(model, shape))
        assert count_flops(plain, shape) < count_flops(model, shape)
    assert model_size_bytes(out) < model_size_bytes(model)
    y = session(exported).run(None, {"input": x[:2].numpy()})[0]
    assert y.shape == (2, 10)
