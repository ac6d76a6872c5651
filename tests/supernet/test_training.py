"""Supernet training (sandwich rule, in-place distillation), checkpoints, BN recalibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.config import DataConfig, TrainConfig
from nas.data import load_data
from nas.errors import NasError
from nas.supernet import ElasticMobileNet, Stage
from nas.supernet.train import recalibrate_bn, train_supernet
from nas.train import evaluate

CFG = TrainConfig(epochs=2, batch_size=64, lr=0.005, optimizer="adam", schedule="cosine")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


def _net(digits, **kw) -> ElasticMobileNet:
    torch.manual_seed(0)
    return ElasticMobileNet(
        digits.input_shape,
        digits.num_classes,
        stages=(Stage(16, 2, 2), Stage(24, 2, 2)),
        stem=8,
        head=32,
        depths=(1, 2),
        expansions=(2, 3),
        kernels=(3, 5),
        **kw,
    )


def test_every_subnet_learns_from_one_training(digits, tmp_path: Path) -> None:
    net = _net(digits)
    stats = train_supernet(net, digits.train, CFG, dataset="digits", checkpoint=tmp_path / "s.pt")
    assert stats["resumed_from"] == 0 and stats["epochs"] == 2
    gen = torch.Generator().manual_seed(0)
    for config in [net.largest(), net.smallest(), net.sample(gen), net.sample(gen)]:
        net.set_active(config)
        recalibrate_bn(net, digits.train.x[:500])
        inside = evaluate(net, digits.val)
        assert inside > 0.5  # far above chance (0.1) with no training of its own
        # the extracted sub-network scores exactly what it scored inside the supernet
        assert evaluate(net.extract(config).eval(), digits.val) == pytest.approx(inside, abs=1e-3)


def test_resuming_gives_the_uninterrupted_weights(digits, tmp_path: Path) -> None:
    straight = _net(digits)
    train_supernet(straight, digits.train, CFG, dataset="digits", checkpoint=tmp_path / "a.pt")
    assert torch.load(tmp_path / "a.pt", weights_only=False)["epoch"] == 2
    resumed, first, ckpt2 = _net(digits), _net(digits), tmp_path / "c.pt"
    one = CFG.model_copy(update={"epochs": 1})
    with pytest.raises(NasError, match="another recipe"):  # another schedule: another training
        train_supernet(first, digits.train, one, dataset="digits", checkpoint=tmp_path / "a.pt")

    # stop after epoch 1 by raising from the progress callback, then resume
    def stop(msg: str) -> None:
        if msg.startswith("supernet epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet(first, digits.train, CFG, dataset="digits", checkpoint=ckpt2, announce=stop)
    assert torch.load(ckpt2, weights_only=False)["epoch"] == 1
    stats = train_supernet(resumed, digits.train, CFG, dataset="digits", checkpoint=ckpt2)
    assert stats["resumed_from"] == 1
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_a_checkpoint_of_another_supernet_is_refused(digits, tmp_path: Path) -> None:
    ckpt = tmp_path / "s.pt"
    one = CFG.model_copy(update={"epochs": 1})
    train_supernet(_net(digits), digits.train, one, dataset="digits", checkpoint=ckpt)
    with pytest.raises(NasError, match=r"another dataset .*delete it to retrain"):
        train_supernet(_net(digits), digits.train, one, dataset="mnist5k", checkpoint=ckpt)
    with pytest.raises(NasError, match="another supernet"):
        wider = _net(digits, width_mults=(0.25, 1.0))
        train_supernet(wider, digits.train, one, dataset="digits", checkpoint=ckpt)
