"""A user's space from a file, with its own nn.Module classes, as users run it: the CLI from the
experiment's folder with the default run folder, then export and report in new processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

SPACE = """
import torch
from torch import nn


class MyBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.lin = nn.Linear(cin, cout)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.lin(x)))


class MyNet(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.flat = nn.Flatten()
        self.block = MyBlock(64, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.block(self.flat(x)))


def space(trial, *, input_shape, num_classes):
    return MyNet(trial.suggest_categorical("width", [16, 32]), num_classes)
"""


def _nas(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_file_space_with_own_classes_exports_from_another_process(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "my_space.py").write_text(SPACE)
    exp = {
        "name": "mine",
        "data": {"name": "digits"},
        "space": {"name": "my_space.py:space"},  # relative to the YAML's folder
        "train": {"epochs": 1, "batch_size": 64},
        "objectives": {"accuracy": "maximize", "params": "minimize"},
        "compression": {"slimming": {"ratio": [0.2, 0.5]}},
        "search": {"trials": 3, "workers": 1, "sampler": "random", "seed": 0},
    }
    (proj / "exp.yaml").write_text(yaml.safe_dump(exp))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # run from another folder: the space file is found beside the YAML, not in the cwd
    r = _nas(elsewhere, "run", str(proj / "exp.yaml"), "-q")
    assert r.returncode == 0, r.stderr
    run = elsewhere / "runs" / "mine"
    frozen = yaml.safe_load((run / "experiment.yaml").read_text())
    assert frozen["space"]["name"] == f"{(proj / 'my_space.py').resolve()}:space"
    assert list((run / "weights").glob("trial-*.pt")), "slimming saves the changed module"
    # export and report in fresh processes, from a third folder: no ModuleNotFoundError
    third = tmp_path / "third"
    third.mkdir()
    r = _nas(third, "export", str(run), "--select", "front", "-q")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert list((run / "exports").glob("*/model.onnx"))
    r = _nas(third, "report", str(run))
    assert r.returncode == 0, r.stderr
    # the space file moved away: export says which file is missing, in one line
    (proj / "my_space.py").rename(proj / "moved.py")
    r = _nas(third, "export", str(run), "-q", "--to", "again")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "my_space.py" in r.stderr and "does not exist" in r.stderr


def test_missing_relative_space_file_names_both_paths(tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text(
        yaml.safe_dump({"space": {"name": "nope.py:space"}, "objectives": {"accuracy": "maximize"}})
    )
    r = _nas(tmp_path, "run", "exp.yaml", "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "relative to the experiment file" in r.stderr and str(tmp_path) in r.stderr
