"""The ``pretrained`` space: a fixed trained model from a run folder or a file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

import nas
from nas.export import trial_model
from search_spaces.pretrained import pretrained


def _trial() -> optuna.trial.BaseTrial:
    return optuna.trial.FixedTrial({})


def test_from_run_folder_is_the_knee_model(finished_run: Path) -> None:
    run = nas.load(str(finished_run))
    knee = run.front().knee()
    model = pretrained(
        _trial(), input_shape=(1, 8, 8), num_classes=10, run=str(finished_run), select="knee"
    )
    ref = trial_model(run, knee)
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(model(x), ref(x))
    again = pretrained(
        _trial(),
        input_shape=(1, 8, 8),
        num_classes=10,
        run=str(finished_run),
        select=knee.number,
    )
    assert again is not model  # a fresh copy per trial
    assert torch.allclose(again(x), ref(x))


def test_from_file_and_errors(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(net, tmp_path / "m.pt")
    got = pretrained(_trial(), input_shape=(1, 8, 8), num_classes=10, path=str(tmp_path / "m.pt"))
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(got(x), net(x))
    with pytest.raises(ValueError, match="exactly one of run"):
        pretrained(_trial(), input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="does not exist"):
        pretrained(_trial(), input_shape=(1, 8, 8), num_classes=10, path=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="needs 3 classes"):
        pretrained(_trial(), input_shape=(1, 8, 8), num_classes=3, path=str(tmp_path / "m.pt"))
