"""The ``pretrained`` space: a fixed trained model from a run folder or a file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

import nas
from nas.run_folder import trial_model
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
        pretrained(
            _trial(),
            input_shape=(1, 8, 8),
            num_classes=3,
            path=str(tmp_path / "m.pt"),
            new_head_ok=False,
        )
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(ValueError, match="does not load"):
        pretrained(_trial(), input_shape=(1, 8, 8), num_classes=10, path=str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match=r"does not run on this dataset's \(1, 28, 28\) inputs"):
        pretrained(_trial(), input_shape=(1, 28, 28), num_classes=10, path=str(tmp_path / "m.pt"))


def test_another_number_of_classes_gets_a_new_head(tmp_path: Path) -> None:
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )
    torch.save(net, tmp_path / "m.pt")
    got = pretrained(_trial(), input_shape=(1, 8, 8), num_classes=3, path=str(tmp_path / "m.pt"))
    assert got(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert torch.equal(got[1].weight, net[1].weight)  # the backbone is kept
    assert got[3].out_features == 3


def test_base_model_from_an_export_folder_or_its_safetensors(
    finished_run: Path, tmp_path: Path
) -> None:
    from tests.conftest import experiment

    run = nas.load(str(finished_run))
    (export,) = run.front().export(tmp_path / "out", select="knee", progress=False)
    ref = trial_model(run, run.front().knee())
    x = torch.rand(5, 1, 8, 8)
    for path in (export, export / "weights.safetensors"):
        got = pretrained(_trial(), input_shape=(1, 8, 8), num_classes=10, path=str(path))
        torch.testing.assert_close(got(x), ref(x))
    exp = experiment(
        tmp_path,
        space=None,
        base_model=str(export),
        compression={"lowrank": {"rank": [0.3, 0.8]}},
        train={"epochs": 0.5},
        search__trials=2,
        search__workers=1,
    )
    new = nas.run(str(exp), out=tmp_path / "run", progress=False)
    assert new.exp.space.name == "pretrained" and new.exp.space.args == {"path": str(export)}
    frozen = nas.load(str(tmp_path / "run"))  # the frozen experiment re-validates
    assert frozen.exp.base_model == str(export)
    done = [t for t in new.study().get_trials() if t.state.name == "COMPLETE"]
    assert len(done) == 2
    # training continued from the exported weights: about as accurate as the exported model
    # after half an epoch (from scratch, half an epoch of this mlp is far below it)
    accs = [t.user_attrs["accuracy_before_compression"] for t in done]
    knee_acc = run.front().knee().metrics["accuracy"]
    assert all(a >= knee_acc - 0.2 for a in accs), (accs, knee_acc)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"base_model": "/nonexistent/model.pt", "space": None}, "does not exist"),
        ({"base_model": "x.pt"}, "give space or base_model, not both"),
    ],
)
def test_bad_base_model_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, needle: str
) -> None:
    from nas.cli import main
    from tests.conftest import experiment

    exp = experiment(tmp_path, **changes)
    assert main(["run", str(exp), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "run").exists()
