"""Training: budgets, seeding, schedules, regulariser hooks."""

from __future__ import annotations

import math

import torch
from torch import nn

from nas.config import TrainConfig
from nas.data import Split
from nas.train import _lr_factor, evaluate, total_steps, train


def _data(n: int = 256) -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return Split(x, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))


def test_step_budget_wins_over_epochs() -> None:
    assert total_steps(TrainConfig(epochs=2, batch_size=64), 256) == 8
    assert total_steps(TrainConfig(epochs=0.5, batch_size=64), 256) == 2
    assert total_steps(TrainConfig(epochs=5, steps=3), 256) == 3
    stats = train(_model(), _data(), TrainConfig(steps=5, batch_size=32))
    assert stats["steps"] == 5


def test_training_learns_and_is_seeded() -> None:
    data, cfg = _data(), TrainConfig(epochs=10, batch_size=32, lr=0.01)
    a, b = _model(), _model()
    before = evaluate(a, data)
    train(a, data, cfg, seed=3)
    train(b, data, cfg, seed=3)
    assert evaluate(a, data) > max(before, 0.9)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = _model()
    train(c, data, cfg, seed=4)
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_schedules() -> None:
    assert _lr_factor("constant", 50, 100) == 1.0
    assert math.isclose(_lr_factor("cosine", 0, 100), 1.0)
    assert math.isclose(_lr_factor("cosine", 50, 100), 0.5)
    assert _lr_factor("step", 10, 90) == 1.0 and math.isclose(_lr_factor("step", 70, 90), 0.01)


def test_loss_hook_is_added_to_the_loss() -> None:
    model, data = _model(), _data()
    first = model[1].weight

    def l1(m: nn.Module) -> torch.Tensor:
        return 10.0 * m[1].weight.abs().sum()

    train(
        model, data, TrainConfig(steps=30, batch_size=32, optimizer="sgd", lr=0.01), loss_hooks=[l1]
    )
    assert first.abs().sum() < _model()[1].weight.abs().sum() * 0.5
