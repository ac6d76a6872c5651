"""The per-layer latency lookup table: pieces that compose the sub-network, cached measurements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.supernet import ElasticMobileNet, Stage
from nas.supernet import latency as lut

SHAPE = (1, 28, 28)


def _net() -> ElasticMobileNet:
    torch.manual_seed(0)
    stages = (Stage(16, 2, 2), Stage(24, 2, 2))
    return ElasticMobileNet(SHAPE, 10, stages=stages, head=32, depths=(1, 2)).eval()


def test_pieces_compose_the_subnetwork() -> None:
    net = _net()
    config = net.sample(torch.Generator().manual_seed(3))
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        y = x
        for _, module, shape in net.pieces(config):
            assert tuple(y.shape[1:]) == tuple(shape)
            y = module.eval()(y)
        torch.testing.assert_close(y, net.extract(config).eval()(x), atol=1e-5, rtol=1e-5)


def test_table_measures_each_piece_once_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    def fake(module, shape, batch_size=1, repeats=50) -> float:
        calls.append(shape)
        return float(sum(p.numel() for p in module.parameters())) / 1e6

    monkeypatch.setattr(lut, "measure", fake)
    net, path = _net(), tmp_path / "latency.json"
    table = lut.LatencyTable(path)
    big, small = net.largest(), net.smallest()
    predicted = table.predict(net, big)
    n = len(calls)
    # each piece, and once an empty model (the per-call cost, counted once per prediction)
    assert n == len(net.pieces(big)) + 1 and path.is_file()
    assert table.overhead == 0.0  # the fake times a model by its parameters
    assert predicted == pytest.approx(sum(table.entries.values()))
    assert table.predict(net, big) == predicted and len(calls) == n  # nothing measured again
    table.predict(net, small)
    again = lut.LatencyTable(path)  # read back from the run folder
    assert again.entries == table.entries
    assert again.predict(net, small) < again.predict(net, big)
    data = json.loads(path.read_text())
    data["machine"] = "another machine"
    path.write_text(json.dumps(data))
    assert lut.LatencyTable(path).entries == {}  # another machine's timings are not reused


def test_a_real_measurement_is_positive() -> None:
    net = _net()
    (key, module, shape), *_ = net.pieces(net.smallest())
    assert key.startswith("stem:") and lut.measure(module, shape, repeats=5) > 0


def test_fill_times_every_piece_a_subnetwork_can_hold_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(lut, "measure", lambda m, shape, b=1, r=50: calls.append(shape) or 1.0)
    net = _net()
    table = lut.LatencyTable(tmp_path / "latency.json")
    n = table.fill(net)
    assert n == len(calls) == len(set(net.piece_keys())) == len(table.entries)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # every sampled sub-network is covered: nothing measured on predict
        config = net.sample(gen)
        assert table.predict(net, config) == pytest.approx(1.0)  # n pieces - (n - 1) overheads
    assert len(calls) == n + 1  # only the empty model's time was added
    assert lut.LatencyTable(tmp_path / "latency.json").fill(net) == 0  # cached


def test_a_piece_from_its_key_is_the_piece_of_the_subnetwork() -> None:
    net = _net()
    config = net.sample(torch.Generator().manual_seed(5))
    for key, module, shape in net.pieces(config):
        alone, alone_shape = net.piece(key)
        assert tuple(alone_shape) == tuple(shape)
        inp = torch.rand(2, *shape)
        with torch.no_grad():
            torch.testing.assert_close(alone.eval()(inp), module.eval()(inp))
