"""`nas finalize`: retrain selected models at the final budget, resumable, used by export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import nas
from nas.cli import main
from nas.data import final_splits, load_data
from nas.front import cost_disagreements
from nas.run_folder import final_root, read_finals, record_path, trial_model
from nas.runs import Run
from tests.conftest import experiment


def test_finalize_trains_on_the_full_split_and_measures_on_test(run_copy: Path) -> None:
    run = Run.open(run_copy)
    rf = run.front()
    knee = rf.knee()
    records = rf.finalize("knee", epochs=2, workers=1, progress=False)
    rec = records[knee.number]
    full = final_splits(run.exp.data)
    searched = load_data(run.exp.data)
    assert rec["train_examples"] == len(full.train) == len(searched.train) + len(searched.val)
    assert rec["epochs"] == 2 and rec["from"] == "scratch"
    metrics = rec["metrics"]
    # every objective re-measured, accuracy on the test split (test_accuracy is the same split)
    assert set(run.directions) <= set(metrics)
    assert metrics["accuracy"] == metrics["test_accuracy"]
    assert metrics["params"] == knee.metrics["params"]  # same architecture
    assert metrics["latency_ms_batch1"] > 0 and metrics["latency_ms_batch64"] > 0
    assert rec["search_metrics"] == knee.metrics
    assert (final_root(run_copy) / "weights" / f"trial-{knee.number:05d}.safetensors").is_file()
    # the saved final model scores what the record says
    model = trial_model(run, knee, final_root(run_copy))
    with torch.no_grad():
        acc = (model(full.test.x).argmax(1) == full.test.y).float().mean().item()
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_finalize_is_resumable_per_model(run_copy: Path) -> None:
    rf = Run.open(run_copy).front()
    numbers = [p.number for p in rf.points][:2]
    select = [numbers[0]]
    rf.finalize(select, epochs=1, workers=1, progress=False)
    path = record_path(run_copy, numbers[0])
    before = path.stat().st_mtime_ns
    # the same budget again plus one more model: the first is kept, the second trained
    rf.finalize(numbers, epochs=1, workers=2, progress=False)
    assert path.stat().st_mtime_ns == before
    assert set(read_finals(run_copy)) == set(numbers)
    # another budget trains it again
    rf.finalize(select, epochs=2, workers=1, progress=False)
    assert read_finals(run_copy)[numbers[0]]["epochs"] == 2


def test_export_and_front_use_the_finalized_model(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["finalize", str(run_copy), "--select", "knee", "--epochs", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "final accuracy" in out and "finalized by `nas finalize`" in out
    rf = Run.open(run_copy).front()
    knee = rf.knee().number
    final = read_finals(run_copy)[knee]
    (d,) = rf.export(tmp_path / "out", select="knee", progress=False)
    metrics = json.loads((d / "metrics.json").read_text())
    config = json.loads((d / "config.json").read_text())
    assert config["weights"].startswith("finalized: 2 epochs from scratch")
    assert metrics["final"]["test_accuracy"] == final["metrics"]["test_accuracy"]
    assert abs(metrics["exported"]["test_accuracy"] - final["metrics"]["test_accuracy"]) <= 0.005
    assert "costs_disagree" in metrics
    assert main(["front", str(run_copy), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["front"]
    assert [r["number"] for r in rows if "final" in r] == [knee]
    # the HTML report has the search-time and final metrics side by side (strict HTML)
    import html5lib

    from nas.html_report import write_report

    page = write_report(Run.open(run_copy)).read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    assert "Finalized models" in page and f"#{knee}" in page and "final test_accuracy" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--epochs", "-2"], "--epochs must be > 0"),
        (["--select", "9999"], "not completed trials"),
        (["--where", "params < 0"], "removed"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_finalize_bad_input(
    finished_run: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["finalize", str(finished_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not final_root(finished_run).exists()


def test_finalize_params_that_no_longer_build(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_copy / "experiment.yaml"
    exp = yaml.safe_load(path.read_text())
    exp["space"]["args"]["widths"] = [7]  # the space no longer offers the searched widths
    path.write_text(yaml.safe_dump(exp))
    assert main(["finalize", str(run_copy), "--select", "knee"]) == 2
    err = capsys.readouterr().err
    assert "param width_0=" in err and "one of [7]" in err and "restore" in err
    assert not final_root(run_copy).exists()


def test_finalize_search_weights_needs_stored_weights(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    knee = Run.open(run_copy).front().knee().number
    (run_copy / "weights" / f"trial-{knee:05d}.safetensors").unlink()
    assert main(["finalize", str(run_copy), "--select", "knee", "--from", "search-weights"]) == 2
    assert "no stored weights" in capsys.readouterr().err
    # from scratch needs only the params
    assert main(["finalize", str(run_copy), "--select", "knee", "--epochs", "1", "-q"]) == 0


def _compressed_run(tmp_path: Path, compression: dict) -> Path:
    path = experiment(tmp_path, compression=compression, search__trials=2, search__workers=1)
    return nas.run(str(path), out=tmp_path / "run", progress=False).dir


def test_search_weights_keeps_pruned_weights_at_zero(tmp_path: Path) -> None:
    run_dir = _compressed_run(
        tmp_path, {"unstructured": {"sparsity": 0.6, "schedule": "oneshot", "finetune": 0.5}}
    )
    run = Run.open(run_dir)
    p = run.front().knee()
    rec = run.front().finalize([p.number], epochs=1, start="search-weights", progress=False)
    before = trial_model(run, p)
    after = trial_model(run, p, final_root(run_dir))
    checked = 0
    for (name, w0), w1 in zip(before.named_parameters(), after.parameters(), strict=True):
        if name.endswith("weight") and (w0 == 0).float().mean() > 0.5:
            assert torch.all(w1[w0 == 0] == 0), name  # pruned stays pruned
            assert not torch.equal(w0, w1), name  # the rest trained further
            checked += 1
    assert checked >= 1
    assert rec[p.number]["from"] == "search-weights"


def test_search_weights_refuses_weight_sharing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _compressed_run(tmp_path, {"weight_sharing": {"bits": 4, "finetune": 0.5}})
    assert main(["finalize", str(run_dir), "--select", "knee", "--from", "search-weights"]) == 2
    assert "uses weight_sharing" in capsys.readouterr().err


def test_cost_disagreements_flag_latency_bound_models() -> None:
    def row(flops: float, ms: float, spread: float = 0.05) -> dict[str, float]:
        return {"flops": flops, "latency_ms_batch1": ms, "latency_spread_batch1": spread}

    rows = {
        1: row(1e6, 1.0),
        2: row(1e5, 0.8),  # 10x fewer MACs, barely faster
        3: row(5e5, 0.5),  # agrees
        4: row(9e5, 0.2),  # int8: faster than MACs say
        5: row(1e5, 0.3, spread=0.6),  # 3x the MAC ratio, but within its measured noise
    }
    flags = cost_disagreements(rows)
    assert set(flags) == {2, 4}
    assert "flops x0.1 but latency_ms_batch1 x0.8 of trial 1 (latency fell less)" in flags[2]
    assert "latency fell more" in flags[4]
    assert cost_disagreements({1: {"flops": 1e6}, 2: {"flops": 1e5}}) == {}  # nothing timed
    # a latency without a measured spread (the search-time objective) is not judged
    unmeasured = {n: {"flops": r["flops"], "latency_ms_batch1": r["latency_ms_batch1"]}
                  for n, r in rows.items()}  # fmt: skip
    assert cost_disagreements(unmeasured) == {}


def test_scratch_applies_the_searched_compression(tmp_path: Path) -> None:
    run_dir = _compressed_run(
        tmp_path,
        {
            "lowrank": {"rank": [0.5, 0.5], "finetune": 0.5},
            "quantize": {"bits": [8, 8], "finetune": 0.5},
        },
    )
    run = Run.open(run_dir)
    p = run.front().knee()
    rec = run.front().finalize([p.number], epochs=1, progress=False)[p.number]
    searched = trial_model(run, p)
    final = trial_model(run, p, final_root(run_dir))
    assert final.nas_compression == searched.nas_compression  # the same knobs, applied again
    assert [tuple(t.shape) for t in final.state_dict().values()] == [
        tuple(t.shape) for t in searched.state_dict().values()
    ]
    assert rec["metrics"]["params"] == p.metrics["params"]
    # the deployed final model is the real int8 one: export re-verifies it against the record
    (d,) = run.front().export(tmp_path / "out", select=[p.number], progress=False)
    assert (d / "model.int8.onnx").is_file()


SPACE = """
from torch import nn

RAISE = False


def space(trial, *, input_shape, num_classes):
    if RAISE:
        raise ValueError("widths changed")
    w = trial.suggest_int("w", 4, 16)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, w), nn.ReLU(), nn.Linear(w, num_classes))
"""


def test_finalize_a_user_space_that_now_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = tmp_path / "myspace.py"
    code.write_text(SPACE)
    path = experiment(
        tmp_path, space={"name": f"{code}:space"}, search__trials=2, search__workers=1
    )
    run_dir = nas.run(str(path), out=tmp_path / "run", progress=False).dir
    code.write_text(SPACE.replace("RAISE = False", "RAISE = True"))
    assert main(["finalize", str(run_dir), "--select", "knee"]) == 2
    err = capsys.readouterr().err
    assert "no longer builds" in err and "widths changed" in err and "fix the space code" in err
    assert len(err.strip().splitlines()) == 1 and not final_root(run_dir).exists()
