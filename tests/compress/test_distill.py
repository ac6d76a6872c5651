"""Knowledge distillation: the loss, the cached teacher, and the pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from safetensors.torch import load_file
from torch import nn

import nas
from nas.cli import main
from nas.compress.distill import distillation_loss
from tests.conftest import experiment


def test_distillation_loss() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(distillation_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))
    kl = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
    torch.testing.assert_close(distillation_loss(s, t, y, 4.0, 1.0), 16 * kl)
    assert float(distillation_loss(t, t, y, 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def _distill_exp(folder: Path, **distill: object) -> Path:
    return experiment(
        folder,
        space={"name": "cnn", "args": {"max_depth": 2, "widths": [4, 8, 16]}},
        compression={"distill": {"temperature": [2.0, 4.0], "alpha": [0.5, 0.9], **distill}},
        search__trials=3,
        search__workers=1,
        search__sampler="random",
    )


def test_largest_teacher_is_trained_once_and_students_learn_from_it(tmp_path: Path) -> None:
    run = nas.run(str(_distill_exp(tmp_path)), out=tmp_path / "run", progress=False)
    teacher = tmp_path / "run" / "teacher" / "largest"
    info = json.loads((teacher / "info.json").read_text())
    # the largest architecture of this space: two 16-wide conv layers
    assert info["params"]["depth"] == 2 and info["params"]["width_0"] == 16
    assert info["val_accuracy"] > 0.5 and (teacher / "model.pt").is_file()
    done = run.study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        assert 2.0 <= t.user_attrs["distill"]["temperature"] <= 4.0
        assert "compression" not in t.user_attrs  # distillation trains, it does not compress
    stamp = (teacher / "logits.safetensors").stat().st_mtime_ns
    nas.run(str(_distill_exp(tmp_path)), out=tmp_path / "run", trials=4, progress=False)
    assert (teacher / "logits.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    dirs = run.front().export(tmp_path / "out", select="front", progress=False)
    assert dirs and not (dirs[0] / "model.pt").exists()  # an uncompressed model


def test_a_given_teacher_file(tmp_path: Path) -> None:
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    torch.save(teacher, tmp_path / "teacher.pt")
    exp = _distill_exp(tmp_path, teacher=str(tmp_path / "teacher.pt"))
    nas.run(str(exp), out=tmp_path / "run", trials=1, progress=False)
    (folder,) = (tmp_path / "run" / "teacher").glob("given-*")
    assert json.loads((folder / "info.json").read_text())["teacher"].endswith("teacher.pt")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: str(d / "missing.pt"), "does not exist"),
        (
            lambda d: (
                torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), d / "t3.pt"),
                str(d / "t3.pt"),
            )[1],
            "outputs (3,) logits, the dataset has 10 classes",
        ),
        (lambda d: ((d / "junk.pt").write_text("not a model"), str(d / "junk.pt"))[1], "load"),
    ],
)
def test_bad_teacher_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, needle: str
) -> None:
    exp = _distill_exp(tmp_path, teacher=make(tmp_path))
    assert main(["run", str(exp), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: distill.teacher") and err.count("\n") == 1, err
    assert needle in err
    assert not (tmp_path / "run").exists()


def test_finalize_distils_from_a_teacher_trained_on_the_final_split(tmp_path: Path) -> None:
    from nas.data import final_splits
    from nas.run_folder import final_root

    run = nas.run(str(_distill_exp(tmp_path)), out=tmp_path / "run", progress=False)
    best = run.front().best("accuracy")
    rec = run.front().finalize([best.number], epochs=2, workers=1, progress=False)[best.number]
    # the search's teacher saw the search's training split; the final one sees the whole split
    teacher = final_root(run.dir) / "teacher" / "largest"
    logits = load_file(teacher / "logits.safetensors")["logits"]
    assert len(logits) == rec["train_examples"] == len(final_splits(run.exp.data).train)
    assert rec["metrics"]["test_accuracy"] > 0.3  # well above chance (0.1) for this tiny net
