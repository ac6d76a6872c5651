from __future__ import annotations

import math

import numpy as np
import onnx
import optuna
import pytest
import torch
from torch import nn

from nas import onnx_utils
from nas.compress.fusion import fold_bn
from nas.compress.int8_export import export_int8, int8_ops, int8_record
from nas.compress.quant_ops import (
    ActFakeQuant,
    FakeQuantWeight,
    QATConv2d,
    QATLinear,
    fake_quant_weight,
    pack_weights,
    packed_size_bytes,
    prepare_qat,
    quantizable_layers,
    strip_qat,
    unpack_weights,
)
from objectives import model_size_bytes
from search_spaces import cnn, mobilenet

optuna.logging.set_verbosity(optuna.logging.WARNING)
SHAPE = (1, 16, 16)


def _sample(space, seed: int, input_shape=SHAPE) -> nn.Module:
    torch.manual_seed(seed)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    model = space(trial, input_shape=input_shape, num_classes=10)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.rand(8, *input_shape))
    return model.eval()


def _small_cnn(input_shape=SHAPE, widths=(8, 16), pool="max") -> nn.Module:
    params = {"depth": len(widths)}
    for i, w in enumerate(widths):
        params |= {f"width_{i}": w, f"kernel_{i}": 3, f"pool_{i}": pool}
    return cnn(optuna.trial.FixedTrial(params), input_shape=input_shape, num_classes=10)


# --- QAT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_fake_quantized_weights_take_at_most_2_to_the_b_values_per_channel(bits):
    qat = prepare_qat(_sample(cnn, 1), bits)
    layers = [m for m in qat.modules() if isinstance(m, FakeQuantWeight)]
    assert layers
    for layer in layers:
        assert layer.weight_bits == bits
        w_q = layer.quantized_weight().detach()
        for channel in w_q.reshape(len(w_q), -1):
            assert len(torch.unique(channel)) <= 2**bits
        # symmetric grid: every value is an integer multiple of the channel's scale
        scale = w_q.abs().reshape(len(w_q), -1).amax(1) / (2 ** (bits - 1) - 1)
        codes = w_q.reshape(len(w_q), -1) / scale[:, None].clamp_min(1e-12)
        torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)


def test_straight_through_gradient_reaches_float_weights():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    qat = prepare_qat(nn.Sequential(layer), 3, act_bits=None)[0]
    x = torch.randn(5, 6)
    qat(x).pow(2).sum().backward()
    # STE: d/dw equals the gradient of a float layer that holds the quantized weights
    ref = nn.Linear(6, 3)
    with torch.no_grad():
        ref.weight.copy_(fake_quant_weight(qat.weight, 3))
        ref.bias.copy_(qat.bias)
    ref(x).pow(2).sum().backward()
    assert qat.weight.grad is not None and qat.weight.grad.abs().sum() > 0
    torch.testing.assert_close(qat.weight.grad, ref.weight.grad)


def test_fake_quant_applies_in_eval_too_and_original_is_untouched():
    model = _sample(cnn, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qat = prepare_qat(model, 2).eval()
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert not torch.allclose(qat(x), model(x), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, FakeQuantWeight) for m in model.modules())


def test_per_layer_bits_mapping():
    model = _sample(cnn, 1)
    names = quantizable_layers(model)
    assert len(names) >= 2
    first, last = names[0], names[-1]
    qat = prepare_qat(model, {first: 3, last: 6})
    assert quantizable_layers(qat) == names
    assert isinstance(qat.get_submodule(first), FakeQuantWeight)
    assert qat.get_submodule(first).weight_bits == 3
    assert qat.get_submodule(last).weight_bits == 6
    for name in names[1:-1]:
        layer = qat.get_submodule(name)
        assert not isinstance(layer, FakeQuantWeight)
        assert not hasattr(layer, "weight_bits")


@pytest.mark.parametrize("bad", [1, 9, 0, True, "4", 4.0])
def test_bad_bits_are_rejected_with_the_value_and_the_fix(bad):
    with pytest.raises(ValueError, match=r"2\.\.8") as err:
        prepare_qat(_small_cnn(), bad)
    assert f"bits={bad!r}" in str(err.value)
    if bad == 1:
        assert "binary" in str(err.value)


def test_bad_mapping_and_act_bits_are_rejected():
    model = _small_cnn()
    with pytest.raises(ValueError, match="quantizable_layers") as err:
        prepare_qat(model, {"features.1": 4})  # a BatchNorm
    assert "features.0" in str(err.value)
    with pytest.raises(ValueError, match=r"bits\['features.0'\]=1"):
        prepare_qat(model, {"features.0": 1})
    with pytest.raises(ValueError, match="act_bits=1"):
        prepare_qat(model, 4, act_bits=1)


def test_activation_fake_quant_tracks_an_ema_range_in_training_only():
    aq = ActFakeQuant(8, momentum=0.5)
    aq.train()
    aq(torch.tensor([0.0, 4.0]))
    assert aq.running_max.item() == pytest.approx(4.0)
    aq(torch.tensor([0.0, 2.0]))
    assert aq.running_max.item() == pytest.approx(3.0)  # EMA: 0.5 * 4 + 0.5 * 2
    aq.eval()
    y = aq(torch.linspace(-1.0, 10.0, 1000))
    assert aq.running_max.item() == pytest.approx(3.0)  # eval does not update
    assert y.min().item() == 0.0 and y.max().item() == pytest.approx(3.0)  # clipped to range
    assert len(torch.unique(y)) <= 256


def test_size_bytes_counts_quantized_layers_at_their_bit_width():
    model = _sample(cnn, 1)
    qat = prepare_qat(model, 4)
    layers = [m for m in qat.modules() if isinstance(m, FakeQuantWeight)]
    weights = sum(m.weight.numel() for m in layers)
    channels = sum(m.weight.shape[0] for m in layers)
    # each quantized weight: 32 -> 4 bits, plus one float32 scale per output channel; the rest
    # (biases, BatchNorm as folded, float layers) is unchanged
    saved = 4 * weights - weights / 2 - 4 * channels
    assert model_size_bytes(model) - model_size_bytes(qat) == pytest.approx(saved, abs=1)
    assert model_size_bytes(strip_qat(qat)) == model_size_bytes(qat)  # strip keeps weight_bits


def test_qat_with_4_bit_weights_still_learns():
    torch.manual_seed(0)
    n, classes = 512, 4
    y = torch.randint(0, classes, (n,))
    prototypes = torch.randn(classes, *SHAPE)
    x = prototypes[y] + 0.8 * torch.randn(n, *SHAPE)
    model = prepare_qat(_small_cnn(widths=(8, 8)), 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for step in range(100):
        idx = torch.randint(0, n, (32,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.8


def test_strip_qat_gives_plain_layers_with_the_quantized_weights():
    qat = prepare_qat(_sample(cnn, 1), 4, act_bits=None).eval()
    plain = strip_qat(qat)
    assert not any(isinstance(m, (FakeQuantWeight, ActFakeQuant)) for m in plain.modules())
    for name in quantizable_layers(qat):
        layer, source = plain.get_submodule(name), qat.get_submodule(name)
        assert type(layer) in (nn.Conv2d, nn.Linear)
        assert layer.weight_bits == 4
        assert torch.equal(layer.weight, source.quantized_weight())
    assert set(plain.state_dict()) == set(strip_qat(_sample(cnn, 1)).state_dict())
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), qat(x))
    assert isinstance(qat.features[0], QATConv2d)  # the QAT model is untouched


# --- packed storage ----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_unpack_round_trip_is_exact(bits, tmp_path):
    from safetensors.torch import load_file, save_file

    qat = prepare_qat(_sample(cnn, 1), bits)
    plain = strip_qat(qat)
    names = quantizable_layers(plain)
    assert pack_weights(plain).keys() == pack_weights(qat).keys()
    save_file(pack_weights(plain), tmp_path / "w.safetensors")

    fresh = _sample(cnn, 1)  # same architecture, then other weights
    for p in fresh.parameters():
        torch.nn.init.normal_(p)
    unpack_weights(load_file(tmp_path / "w.safetensors"), fresh)
    for name in names:
        layer, source = fresh.get_submodule(name), plain.get_submodule(name)
        assert torch.equal(layer.weight, source.weight), name
        if source.bias is not None:  # convs followed by BatchNorm have none
            assert torch.equal(layer.bias, source.bias), name
        assert layer.weight_bits == bits
    assert pack_weights(fresh).keys() == pack_weights(plain).keys()  # and it packs again
    for key, value in pack_weights(fresh).items():
        assert torch.equal(value, pack_weights(plain)[key]), key

    # a QAT model packs its fake-quantized weights; unpacking into a QAT twin restores them
    twin = prepare_qat(_sample(cnn, 1), bits)
    unpack_weights(pack_weights(qat), twin)
    for name in names:
        assert torch.equal(
            twin.get_submodule(name).weight, qat.get_submodule(name).quantized_weight()
        )


def test_packed_size_4_bits_is_half_a_byte_per_weight_plus_scales():
    torch.manual_seed(0)
    model = prepare_qat(nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)), {"0": 4})
    packed = pack_weights(model)
    assert set(packed) == {"0.weight.codes", "0.weight.scale", "0.weight.bits", "0.bias"}
    assert packed["0.weight.codes"].dtype == torch.uint8
    assert packed["0.weight.codes"].numel() == 128 * 64 // 2
    assert packed["0.weight.scale"].shape == (64,)
    assert packed["0.weight.scale"].dtype == torch.float32
    codes, scales, bits, bias = 128 * 64 // 2, 4 * 64, 1, 4 * 64
    assert packed_size_bytes(model) == codes + scales + bits + bias
    assert packed_size_bytes(model) < 0.17 * 4 * (128 * 64 + 64)  # ~1/8 of fp32 + scales
    assert pack_weights(nn.Sequential(nn.Linear(3, 2))) == {}  # nothing quantized


@pytest.mark.parametrize("bits", [3, 5])
def test_odd_bit_widths_pack_densely(bits):
    model = prepare_qat(nn.Sequential(nn.Linear(7, 3)), bits)
    assert pack_weights(model)["0.weight.codes"].numel() == math.ceil(21 * bits / 8)


def test_unpack_into_another_architecture_fails_clearly():
    packed = pack_weights(strip_qat(prepare_qat(_small_cnn(widths=(8, 16)), 4)))
    with pytest.raises(ValueError, match="packed from"):
        unpack_weights(packed, _small_cnn(widths=(8, 8)))


# --- real int8 ---------------------------------------------------------------------------------


def _dequantized_inputs(graph: onnx.GraphProto, op_type: str) -> list[bool]:
    """For each ``op_type`` node: are its data and weight inputs DequantizeLinear outputs?"""
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return [
        producer.get(n.input[0]) == "DequantizeLinear"
        and producer.get(n.input[1]) == "DequantizeLinear"
        for n in graph.node
        if n.op_type == op_type
    ]


def _int8_nodes(graph: onnx.GraphProto, op_type: str) -> list[bool]:
    """For each ``op_type`` node: does it sit between DequantizeLinear and QuantizeLinear (what
    onnxruntime fuses into an integer kernel, e.g. QLinearAveragePool)?"""
    producer = {out: node.op_type for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    return [
        producer.get(n.input[0]) == "DequantizeLinear"
        and consumers.get(n.output[0], []) == ["QuantizeLinear"]
        for n in graph.node
        if n.op_type == op_type
    ]


@pytest.mark.parametrize(("space", "seed"), [(cnn, 1), (mobilenet, 0), (mobilenet, 1)])
def test_export_int8_writes_a_qdq_model_that_onnxruntime_runs(space, seed, tmp_path):
    model = _sample(space, seed, input_shape=(1, 28, 28))
    calib = torch.rand(128, 1, 28, 28)
    path = export_int8(model, (1, 28, 28), calib, tmp_path / "int8.onnx")
    assert path == tmp_path / "int8.onnx"
    ops = int8_ops(path)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    graph = onnx.load(path).graph
    conv_qdq = _dequantized_inputs(graph, "Conv")
    assert conv_qdq.count(False) == 1  # the input layer (1 channel) stays fp32: faster in ORT
    assert conv_qdq.count(True) >= 1
    assert _dequantized_inputs(graph, "Gemm") == [True]

    x = torch.rand(16, 1, 28, 28)
    sess = onnx_utils.session(path)
    out = sess.run(None, {"input": x.numpy()})[0]
    assert out.shape == (16, 10)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 1e-3


def test_int8_graph_keeps_maxpool_in_float_after_the_fp32_input_layer(tmp_path):
    """ORT would move a QuantizeLinear in front of the MaxPool and run a slow uint8 NCHW MaxPool."""
    import onnxruntime as ort

    model = _small_cnn((1, 28, 28), (16, 16))
    path = export_int8(model, (1, 28, 28), torch.rand(64, 1, 28, 28), tmp_path / "int8.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(tmp_path / "optimized.onnx").graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    ops = [n.op_type for n in graph.node]
    assert "QLinearConv" in ops  # ORT fused DQ -> Conv -> Q into an integer conv
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    assert pools and producer[pools[0].input[0]] in ("Conv", "Relu")  # fp32 pool after fp32 conv


def test_int8_stem_is_settable(tmp_path):
    model = _sample(cnn, 1, input_shape=(1, 28, 28))
    calib = torch.rand(64, 1, 28, 28)
    path = export_int8(model, (1, 28, 28), calib, tmp_path / "int8.onnx", float_stem=False)
    assert _dequantized_inputs(onnx.load(path).graph, "Conv").count(False) == 0  # all int8


def test_int8_export_keeps_float_the_op_types_measured_faster(tmp_path, monkeypatch):
    """The decision is the measurement's (here a stand-in that finds only the float
    AveragePool faster); what stayed float and both latencies are in the file's metadata."""
    import nas.onnx_utils

    def faster(a, b, shape, batch, rounds):
        def int8_pools(m):
            return sum(_int8_nodes(onnx.load(str(m)).graph, "AveragePool"))

        return int8_pools(a) < int8_pools(b)

    monkeypatch.setattr(nas.onnx_utils, "faster", faster)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 7 * 7, 10),
    )  # fmt: skip
    calib = torch.rand(64, 1, 28, 28)
    untuned = export_int8(model, (1, 28, 28), calib, tmp_path / "plain.onnx")
    assert int8_record(untuned) is None
    assert any(_int8_nodes(onnx.load(untuned).graph, "AveragePool"))  # after the fp32 stem: float
    path = export_int8(model, (1, 28, 28), calib, tmp_path / "tuned.onnx", tune_batch=8)
    record = int8_record(path)
    assert record["float_ops"] == ["AveragePool"] and record["batch"] == 8
    assert record["pays"] == (record["int8_ms"] < record["fp32_ms"])
    assert not any(_int8_nodes(onnx.load(path).graph, "AveragePool"))
    assert _dequantized_inputs(onnx.load(path).graph, "Gemm") == [True]


def test_export_int8_of_a_qat_model_and_bad_calibration(tmp_path):
    qat = prepare_qat(_sample(cnn, 1), 4)
    qat.train()
    qat(torch.rand(8, *SHAPE))
    path = export_int8(qat, SHAPE, torch.rand(32, *SHAPE), tmp_path / "qat.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops(path)
    assert int8_ops(path.read_bytes()) == int8_ops(path)
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        export_int8(qat, SHAPE, torch.rand(32, 16, 16), tmp_path / "bad.onnx")


@pytest.fixture(scope="module")
def digits_model():
    from nas.config import DataConfig, TrainConfig
    from nas.data import load_data
    from nas.train import train

    data = load_data(DataConfig(name="digits"))
    model = _small_cnn(data.input_shape, (16, 32))
    train(model, data.train, TrainConfig(epochs=5, batch_size=64, lr=1e-2), seed=0)
    return model, data


def test_int8_accuracy_is_within_2_points_of_fp32(digits_model, tmp_path):
    model, data = digits_model
    fp32 = onnx_utils.accuracy(
        onnx_utils.session(onnx_utils.to_onnx(fold_bn(model), data.input_shape)),
        data.test,
    )
    assert fp32 > 0.85  # the model learned something worth quantizing
    path = export_int8(model, data.input_shape, data.train.x[:256], tmp_path / "digits.onnx")
    int8 = onnx_utils.accuracy(onnx_utils.session(path), data.test)
    assert abs(int8 - fp32) <= 0.02


def test_qat_layers_are_plain_subclasses():
    # the QAT twins are ordinary modules: picklable, deep-copyable, with the same parameters
    import pickle

    qat = prepare_qat(nn.Sequential(nn.Linear(4, 2)), 4)
    assert isinstance(qat[0], QATLinear) and isinstance(qat[0], nn.Linear)
    clone = pickle.loads(pickle.dumps(qat))
    assert set(clone.state_dict()) == {
        "0.weight",
        "0.bias",
        "0.act_quant.running_min",
        "0.act_quant.running_max",
        "0.act_quant.observed",
    }


def test_sensitivity_rounds_one_layer_at_a_time_and_restores_it():
    from nas.compress.quant_ops import sensitivity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(256, 16)
    y = model(x).argmax(1)  # the float model is right on every example
    before = [p.detach().clone() for p in model.parameters()]
    base, table = sensitivity(model, x, y, bits=(2, 8))
    assert base == 1.0 and set(table) == {"1", "3"}
    assert all(-1.0 <= d <= 0.0 for per in table.values() for d in per.values())
    assert table["1"][8] > -0.05 and table["1"][2] < table["1"][8]  # 2 bits hurt more than 8
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
