"""``search: {mode: supernet}`` end to end on digits: train once, score, save the front, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import nas
from nas.cli import main
from nas.compress.slimming import Slimming
from nas.compress.slimming_ops import slimmable_bns
from nas.export import trial_model
from nas.pipeline import Candidate, Step
from nas.run_folder import read_finals
from nas.runs import Run
from nas.space import rebuild, resolve_space
from nas.supernet.search import SupernetProblem, supernet_dir
from nas.train import evaluate
from nas.weights import weights_path
from search_spaces.elastic import params_of, skeleton
from tests.conftest import experiment

ARGS = {"stages": [[16, 2, 2], [24, 2, 2]], "stem": 8, "head": 32, "depths": [1, 2]}
SUPERNET = {
    "space": {"name": "elastic_mobilenet", "args": ARGS},
    "train__epochs": 1,
    "search__mode": "supernet",
    "search__trials": 24,
    "search__supernet": {"epochs": 2, "calibration": 128, "finetune": 0.5},
}


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished supernet run on digits, with latency and compression knobs; do not modify."""
    folder = tmp_path_factory.mktemp("supernet")
    exp = experiment(
        folder,
        **SUPERNET,
        objectives=["accuracy", "flops", "latency_ms"],
        compression={
            "slimming": {"ratio": [0.0, 0.5], "strength": 0, "optional": True},
            "quantize": {"bits": [4, 8]},
        },
    )
    out = folder / "run"
    nas.run(str(exp), out=out, workers=1, progress=False)
    return out


def test_the_space_rebuilds_a_subnetwork_from_its_params() -> None:
    net = skeleton((1, 8, 8), 10, ARGS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = resolve_space("elastic_mobilenet")
    for _ in range(10):
        trial = study.ask()
        model = space(trial, input_shape=(1, 8, 8), num_classes=10, **ARGS)
        assert params_of(model.nas_subnet) == trial.params  # the params select the config
        again = rebuild(space, trial.params, input_shape=(1, 8, 8), num_classes=10, args=ARGS)
        assert {k: v.shape for k, v in again.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
        net.check(model.nas_subnet)


def test_a_supernet_run_scores_without_training_and_saves_its_front(supernet_run: Path) -> None:
    run = Run.open(supernet_run)
    folder = supernet_dir(supernet_run)
    training = json.loads((folder / "training.json").read_text())
    assert training["epochs"] == 2 and (folder / "supernet.pt").is_file()
    trials = [t for t in run.study().trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 24
    # scored, not trained: a score time and no training time per trial
    assert all("score_seconds" in t.user_attrs for t in trials)
    assert not any("train_seconds" in t.user_attrs for t in trials)
    # latency_ms is the lookup table's prediction, filled before the search
    table = json.loads((folder / "latency_table.json").read_text())
    assert len(table["entries"]) == len(skeleton((1, 8, 8), 10, ARGS).piece_keys())
    # compression combined with the sub-network choice
    assert any(t.user_attrs.get("compression") for t in trials)
    # every front model saved as its trial's weights, then fine-tuned (finalize records)
    front = run.front().points
    assert all(weights_path(supernet_run, p.number).is_file() for p in front)
    finals = read_finals(supernet_run)
    assert set(finals) == {p.number for p in front}
    assert all(r["from"] == "search-weights" and r["epochs"] == 0.5 for r in finals.values())
    predictors = json.loads((folder / "predictors.json").read_text())
    assert predictors["accuracy"]["held_out"] >= 4
    assert -1.0 <= predictors["accuracy"]["kendall_tau"] <= 1.0
    assert predictors["latency"]["sub_networks_timed"] == 24


def test_saved_front_weights_score_what_the_search_recorded(supernet_run: Path) -> None:
    run = Run.open(supernet_run)
    for p in run.front().points:
        if p.compression:  # int8 is measured in onnxruntime: compare the float models only
            continue
        model = trial_model(run, p)  # the search's weights, cut from the supernet
        assert evaluate(model, run.splits.val) == pytest.approx(p.metrics["accuracy"], abs=1e-9)


def test_a_cut_out_subnetwork_scores_as_inside_the_supernet(supernet_run: Path) -> None:
    run = Run.open(supernet_run)
    prob = SupernetProblem(run.exp, supernet_run, run.splits)
    gen = torch.Generator().manual_seed(0)
    for config in [prob.net.largest(), prob.net.smallest(), prob.net.sample(gen)]:
        alone = prob.subnet(config)
        inside = evaluate(prob.net, run.splits.val)
        assert evaluate(alone, run.splits.val) == pytest.approx(inside, abs=1e-3)


def test_slimming_a_subnetwork_cuts_its_trailing_channels_then_recalibrates_bn(
    supernet_run: Path,
) -> None:
    run = Run.open(supernet_run)
    prob = SupernetProblem(run.exp, supernet_run, run.splits)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cand = prob.sample(study.ask())
    slimming = Slimming()
    settings = slimming.parse({"ratio": [0.5, 0.5], "strength": 0})
    only = Candidate(cand.model, [Step(slimming, settings, {"ratio": 0.5, "round_to": 1})])
    model, compression = prob.build(only)
    assert compression == {"slimming": {"ratio": 0.5, "round_to": 1}}
    whole = prob.subnet(cand.model.nas_subnet)
    names = slimmable_bns(whole, prob.data.input_shape)
    assert sum(model.get_submodule(n).num_features for n in names) < sum(
        whole.get_submodule(n).num_features for n in names
    )
    recalibrated = 0
    for n in names:
        cut, bn = model.get_submodule(n), whole.get_submodule(n)
        k = cut.num_features
        assert torch.equal(cut.weight, bn.weight[:k])  # the leading channels, not by |gamma|
        recalibrated += not torch.allclose(cut.running_var, bn.running_var[:k])
    assert recalibrated  # the layers after a cut see fewer channels: their statistics moved


def test_export_and_resume_work_as_for_any_run(supernet_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(supernet_run, run_dir)
    before = (supernet_dir(run_dir) / "supernet.pt").stat().st_mtime_ns
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--select", "knee", "--to", str(out), "-q"]) == 0
    assert list(out.glob("*/model.onnx")) or list(out.glob("model.onnx"))
    # the same command again: nothing retrained, nothing rescored
    trials = len(nas.load(str(run_dir)).study().trials)
    r = nas.run(str(supernet_run.parent / "exp.yaml"), out=run_dir, workers=1, progress=False)
    assert (supernet_dir(run_dir) / "supernet.pt").stat().st_mtime_ns == before
    assert len(r.study().trials) == trials


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"space": "mlp"}, "space 'mlp' has no elastic dimensions"),
        (
            {
                "space": {
                    "name": "elastic_mobilenet",
                    "args": {
                        **ARGS,
                        "depths": [2],
                        "expansions": [2],
                        "kernels": [3],
                        "width_mults": [1.0],
                    },
                }
            },
            "has no elastic dimension",
        ),
        (
            {"compression": {"distill": {"teacher": "largest"}}},
            "compression.distill is a training option",
        ),
        ({"search__fidelity": {"eta": 3}}, "remove search.fidelity"),
        ({"space": {"name": "elastic_mobilenet", "args": {"widths": [1]}}}, "unknown arg 'widths'"),
    ],
)
def test_bad_supernet_input_is_one_line(
    tmp_path: Path, changes: dict, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, **{**SUPERNET, **changes})
    assert main(["run", str(exp), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder is touched


def test_a_checkpoint_of_another_dataset_is_refused(
    supernet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(supernet_run, run_dir)
    data = Run.open(run_dir).exp.to_dict()
    data["data"]["val_fraction"] = 0.2  # another split of the data: another training set
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(data))
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(data))  # as if edited in place
    checkpoint = supernet_dir(run_dir) / "supernet.pt"
    before = checkpoint.read_bytes()
    assert main(["run", str(exp), "--out", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a supernet trained with another dataset" in err
    assert "delete it to retrain" in err and len(err.splitlines()) == 1
    assert checkpoint.read_bytes() == before  # nothing computed is lost


def test_the_elastic_cnn_space_runs_in_supernet_mode(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        **{
            **SUPERNET,
            "space": {
                "name": "elastic_cnn",
                "args": {"stages": [[8, 2, 2], [16, 2, 2]], "stem": 8, "head": 16},
            },
            "search__trials": 6,
            "search__supernet": {"epochs": 1, "calibration": 64},
        },
    )
    run = nas.run(str(exp), out=tmp_path / "run", workers=1, progress=False)
    front = run.front().points
    assert all(weights_path(run.dir, p.number).is_file() for p in front)
    assert not read_finals(run.dir)  # finetune 0: the front keeps the inherited weights
    out = tmp_path / "export"
    assert main(["export", str(run.dir), "--select", "knee", "--to", str(out), "-q"]) == 0
