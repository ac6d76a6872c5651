"""The pipeline: cheap metrics first, a violated hard constraint is never trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState

import nas
import nas.space
from objectives import count_flops
from tests.conftest import QUICK, experiment


def test_static_constraint_rejects_before_training(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        constraints={"params": {"max": 2000}},  # 3 mlp candidates are smaller, most larger
        search__trials=3,
        search__workers=1,
        search__sampler="random",
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    trials = run.study().get_trials(deepcopy=False)
    rejected = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and rejected
    broke = [t for t in rejected if "breaks params <= 2000" in t.user_attrs["rejected"]]
    assert broke
    for t in rejected:  # the others repeat a candidate tried before (random draws repeat)
        assert t in broke or t.user_attrs["rejected"] == "duplicate of a candidate already tried"
        assert "train_seconds" not in t.user_attrs  # never trained
        assert not (tmp_path / "run" / "weights" / f"trial-{t.number:05d}.safetensors").exists()
    for t in broke:
        assert t.constraints["params"] > 0
    for t in complete:
        assert t.user_attrs["metrics"]["params"] <= 2000
        assert "train_seconds" in t.user_attrs and "test_accuracy" in t.user_attrs["metrics"]


def test_resume_may_raise_the_trial_budget(finished_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = len(nas.load(str(run_dir)).front().front.candidates)
    run = nas.run(str(QUICK), out=run_dir, workers=1, trials=before + 2, progress=False)
    assert len(run.front().front.candidates) == before + 2


def test_architecture_and_compression_in_one_trial(tmp_path: Path) -> None:
    """Slimming + low-rank + int8 on the cnn space: real shrinking, deployed int8, re-verified."""
    import json

    import onnx

    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "data": {"name": "digits"},
                "space": {"name": "cnn", "args": {"max_depth": 2, "widths": [16, 32]}},
                "train": {"epochs": 4, "batch_size": 64, "lr": 0.01},
                "compression": {
                    "slimming": {"ratio": 0.5, "strength": 1e-4},
                    "lowrank": {"rank": 0.5},
                    "quantize": {"bits": {"choices": [4, 8]}, "finetune": 1},
                },
                "objectives": {
                    "accuracy": "maximize",
                    "flops": "minimize",
                    "size_bytes": "minimize",
                },
                "search": {"trials": 4, "workers": 1, "sampler": "random"},
            }
        )
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    done = run.study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 4
    for t in done:
        # a technique whose knobs changed nothing (lowrank where a factorization would not be
        # smaller) is recorded as not applied, never as compression
        applied, skipped = (
            set(t.user_attrs["compression"]),
            set(t.user_attrs.get("not_applied", {})),
        )
        assert applied | skipped == {"slimming", "lowrank", "quantize"} and not applied & skipped
        assert "quantize" in applied
        assert t.user_attrs["accuracy_before_compression"] > 0
        assert (tmp_path / "run" / "weights" / f"trial-{t.number:05d}.pt").is_file()
    dirs = run.front().export(
        tmp_path / "out", select=" ".join(str(t.number) for t in done), progress=False
    )
    for d in dirs:
        config = json.loads((d / "config.json").read_text())
        bits = config["compression"]["quantize"]["bits"]
        if bits == 8:
            ops = {n.op_type for n in onnx.load(d / "model.int8.onnx").graph.node}
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
            assert config["onnx"]["deployed"] == "model.int8.onnx"
        else:
            assert (d / "weights.packed.safetensors").is_file()
        m = json.loads((d / "metrics.json").read_text())
        exported, searched = m["exported"]["test_accuracy"], m["search"]["test_accuracy"]
        if m["exported"].get("int8", {}).get("float_ops"):
            # kinds of op the export kept float (measured faster): the same model, other rounding
            assert abs(exported - searched) <= 0.005
        else:
            assert exported == searched
        assert m["exported"]["flops"] == m["search"]["flops"]


def test_filter_pruning_criteria_are_searched_and_exported(tmp_path: Path) -> None:
    """filter_pruning on the residual mobilenet space: the criterion is a search parameter, the
    trained model is physically pruned (fewer MACs than its unpruned architecture) and exports."""
    import json

    exp = experiment(
        tmp_path,
        space={"name": "mobilenet", "args": {"stages": 2, "max_depth": 2, "se": False}},
        train={"epochs": 2, "batch_size": 64, "lr": 0.01},
        compression={
            "filter_pruning": {"ratio": [0.3, 0.6], "criterion": ["l1", "fpgm", "taylor"]}
        },
        objectives={"accuracy": "maximize", "flops": "minimize"},
        search__trials=3,
        search__workers=1,
        search__sampler="random",
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    done = run.study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 3
    space = nas.space.resolve_space("mobilenet")
    for t in done:
        knobs = t.user_attrs["compression"]["filter_pruning"]
        assert knobs["criterion"] == t.params["filter_pruning.criterion"]
        arch = {k: v for k, v in t.params.items() if not k.startswith("filter_pruning")}
        args = {"stages": 2, "max_depth": 2, "se": False}
        full = nas.space.rebuild(space, arch, input_shape=(1, 8, 8), num_classes=10, args=args)
        assert t.user_attrs["metrics"]["flops"] < count_flops(full, (1, 8, 8))
    dirs = run.front().export(
        tmp_path / "out", select=" ".join(str(t.number) for t in done), progress=False
    )
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        assert m["exported"]["flops"] == m["search"]["flops"]
        assert m["exported"]["test_accuracy"] == m["search"]["test_accuracy"]
        fusion = m["exported"]["fusion"]  # every conv + BN of the mobilenet folded, checked
        assert fusion["folded_pairs"] > 0 and fusion["max_abs_diff"] <= 1e-5


def test_candidate_a_technique_cannot_apply_to_is_skipped_with_reason(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        space={"name": "cnn", "args": {"max_depth": 1, "widths": [8], "batch_norm": "search"}},
        compression={"slimming": {"ratio": 0.3}},
        search__trials=3,
        search__workers=1,
        search__sampler="random",
        search__seed=1,
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    trials = run.study().get_trials(deepcopy=False)
    skipped = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(t.params["batch_norm"] for t in complete)
    assert skipped and all(not t.params["batch_norm"] for t in skipped)
    assert all("slimming cannot apply" in t.user_attrs["rejected"] for t in skipped)


def test_an_optional_technique_that_cannot_apply_is_left_out(tmp_path: Path) -> None:
    """An optional technique is one the search may leave out: an architecture it cannot apply to
    (slimming on a net without BN) is trained without it instead of being rejected."""
    exp = experiment(
        tmp_path,
        space={"name": "cnn", "args": {"max_depth": 1, "widths": [8], "batch_norm": "search"}},
        compression={"slimming": {"ratio": 0.3, "optional": True}},
        search__trials=4,
        search__workers=1,
        search__sampler="random",
        search__seed=1,
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    trials = run.study().get_trials(deepcopy=False)
    repeats = "duplicate of a candidate already tried"  # a tiny space: the sampler repeats
    assert all(
        t.state == TrialState.COMPLETE or t.user_attrs.get("rejected") == repeats for t in trials
    )
    trials = [t for t in trials if t.state == TrialState.COMPLETE]
    no_bn = [t for t in trials if not t.params["batch_norm"]]
    assert no_bn and all("slimming.use" not in t.params for t in no_bn)
    assert all("compression" not in t.user_attrs for t in no_bn)


def test_a_technique_that_changes_nothing_is_recorded_as_not_applied() -> None:
    """Slimming at round_to 8 cannot remove a channel of 8-wide layers: the model is unchanged,
    so the technique is not in the compression record, and the front says so."""
    import optuna

    from nas.compress import Context, parse_compression
    from nas.pipeline import Step, compress
    from nas.report import describe_compression
    from nas.space import build_model

    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    args = {"max_depth": 2, "widths": [8], "kernels": [3], "pools": ["max"]}
    model = build_model(
        nas.space.resolve_space("cnn"), trial, input_shape=(1, 8, 8), num_classes=3, args=args
    )
    (slim, settings), (quant, qsettings) = parse_compression(
        {"slimming": {"ratio": 0.5}, "quantize": {"bits": 8}}
    )
    plan = [
        Step(slim, settings, {"ratio": 0.5, "strength": 1e-4, "round_to": 8}),
        Step(quant, qsettings, {"bits": 8, "stem": "float"}),
    ]
    out = compress(model, plan, Context((1, 8, 8), torch.rand(16, 1, 8, 8)))
    assert set(out.nas_compression) == {"quantize"}
    assert "ratio 0.5" in out.nas_not_applied["slimming"]
    shown = describe_compression({**out.nas_compression, "slimming": {"not_applied": "..."}})
    assert shown == "int8, slimming not applied"


def test_chance_level_accuracy_is_infeasible(tmp_path: Path) -> None:
    """Without an accuracy floor in the experiment, the floor is the majority-class rate plus
    three standard errors of the validation split; a higher floor of the user's is kept."""
    from nas.config import load_experiment
    from nas.data import chance_floor
    from nas.pipeline import ExperimentProblem

    exp = load_experiment(experiment(tmp_path, objectives={"accuracy": "maximize"}))
    problem = ExperimentProblem(exp, tmp_path / "run")
    val = problem.data.val
    rate = float(torch.bincount(val.y).max()) / len(val)
    floor = chance_floor(val, problem.data.num_classes)
    assert floor == pytest.approx(rate + 3 * (rate * (1 - rate) / len(val)) ** 0.5)
    assert problem.constraints["accuracy"].min == floor
    strict = load_experiment(
        experiment(
            tmp_path, objectives={"accuracy": "maximize"}, constraints={"accuracy": {"min": 0.5}}
        )
    )
    assert ExperimentProblem(strict, tmp_path / "run2").constraints["accuracy"].min == 0.5


def test_a_recorded_metric_that_cannot_be_measured_never_fails_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flops is recorded for every trial; where fvcore cannot count a model it is left out,
    unless the experiment optimises or constrains it."""
    from torch import nn

    from nas.config import load_experiment
    from nas.pipeline import ExperimentProblem
    from objectives.flops import Flops

    def fails(self, model, ctx):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(Flops, "measure", fails)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    exp = load_experiment(experiment(tmp_path))  # accuracy and params
    got = ExperimentProblem(exp, tmp_path / "run").measure(model, trained=False, split=None)
    assert "flops" not in got and got["params"] == 650
    asked = load_experiment(
        experiment(tmp_path, objectives={"accuracy": "maximize", "flops": "minimize"})
    )
    with pytest.raises(RuntimeError, match="cannot trace"):
        ExperimentProblem(asked, tmp_path / "run").measure(model, trained=False, split=None)


def test_an_int8_tuning_that_moves_accuracy_is_dropped_at_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kinds of op kept float change the rounding; where that moves the test accuracy past
    export.tolerance, the export deploys the int8 graph the search measured instead."""
    import json

    import nas.export

    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "data": {"name": "digits"},
                "space": {"name": "cnn", "args": {"max_depth": 1, "widths": [16]}},
                "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
                "compression": {"quantize": {"bits": 8, "finetune": 0.5}},
                "objectives": {"accuracy": "maximize", "flops": "minimize"},
                "search": {"trials": 1, "workers": 1, "sampler": "random"},
            }
        )
    )
    run = nas.run(str(exp), out=tmp_path / "run", progress=False)
    real = nas.export.onnx_utils.accuracy
    calls: list[str] = []

    def accuracy(sess, split):  # the tuned graph scores 0.2 off; the untuned one is measured
        calls.append("tuned" if not calls else "untuned")
        return real(sess, split) + (0.2 if len(calls) == 1 else 0.0)

    monkeypatch.setattr(nas.export, "int8_record", lambda f: {"float_ops": ["Relu"], "pays": True})
    monkeypatch.setattr(nas.export.onnx_utils, "accuracy", accuracy)
    (d,) = run.front().export(tmp_path / "out", select="front", progress=False)
    m = json.loads((d / "metrics.json").read_text())
    assert calls == ["tuned", "untuned"]
    assert m["exported"]["test_accuracy"] == m["search"]["test_accuracy"]
    assert "moved test accuracy" in m["exported"]["fusion"]["int8_tuning_dropped"]
