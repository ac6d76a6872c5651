"""The CLI: every bad input is one line on stderr, exit code 2, no traceback, nothing changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nas.cli import main
from tests.conftest import QUICK, experiment


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("run", "worker", "front", "export", "spaces", "objectives"):
        assert cmd in out


def test_spaces_show_their_arguments_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    cnn = out.split("\nelastic_cnn")[0]  # the spaces are listed by name: cnn first
    assert cnn.startswith("cnn") and "blocks = ['conv']  (of 'conv', 'ghost')" in cnn
    assert "share = False  (of True, False, 'search')" in out  # mobilenet's
    assert "depths = [1, 2, 3]" in out  # elastic_mobilenet's, taken as **args
    assert "model (required)" in out  # timm / torchvision


def test_spaces_and_objectives_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spaces"]) == 0
    assert {"cnn", "mlp", "mobilenet"} <= {
        ln.split()[0] for ln in capsys.readouterr().out.splitlines()
    }
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    assert "flops" in out and "before training" in out and "accuracy" in out


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"search__trialz": 3}, ("unknown key 'search.trialz'", "trials")),
        ({"constraints": {"params": {"min": 5, "max": 1}}}, ("min <= max",)),
        ({"space__name": "resnet9000"}, ("unknown space 'resnet9000'", "cnn")),
        ({"objectives": {"acuracy": "maximize"}}, ("unknown objective 'acuracy'", "accuracy")),
        ({"search__sampler": "cma"}, ("search.sampler", "'tpe'")),
        ({"space__name": "missing_file.py:space"}, ("does not exist",)),
        ({"space__args": {"min_depth": 5, "max_depth": 2}}, ("min_depth",)),
        (
            {"data__name": "fashion-mnist", "data__root": "/nonexistent/fm"},
            ("/nonexistent/fm", "apt-get install dataset-fashion-mnist"),
        ),
        ({"search__storage": "not a url"}, ("not a valid URL",)),
        ({"compression": {"quantize": {"bits": [1, 8]}}}, ("compression.quantize.bits", "[2, 8]")),
        ({"compression": {"slimming": {"ratio": [0.0, 1.0]}}}, ("[0, 1)",)),
        ({"compression": {"lowrank": {"rank": [0, 1]}}}, ("(0, 1]",)),
        ({"compression": {"prune": {}}}, ("unknown technique 'prune'", "slimming")),
        ({"compression": {"slimming": {}}}, ("compression.slimming cannot apply", "BatchNorm")),
    ],
)
def test_run_bad_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, needles: tuple[str, ...]
) -> None:
    out = tmp_path / "run"
    _fails(capsys, ["run", str(experiment(tmp_path, **changes)), "--out", str(out), "-q"], *needles)
    assert not out.exists()


def test_invalid_yaml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: [cnn\nobjectives: {")
    _fails(capsys, ["run", str(bad), "-q"], "invalid YAML", "line")
    _fails(capsys, ["run", str(tmp_path / "nope.yaml"), "-q"], "does not exist")


def test_space_file_that_raises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "myspace.py").write_text("raise RuntimeError('boom at import')\n")
    exp = experiment(tmp_path, space__name=f"{tmp_path / 'myspace.py'}:space")
    _fails(capsys, ["run", str(exp), "--out", str(tmp_path / "r"), "-q"], "boom at import")


def test_space_that_raises_in_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flaky.py").write_text(
        "import torch\n"
        "def space(trial, *, input_shape, num_classes, **kw):\n"
        "    if trial.number > 0:\n"
        "        raise ZeroDivisionError('bad candidate')\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))\n"
    )
    exp = experiment(tmp_path, space__name=f"{tmp_path / 'flaky.py'}:space", space__args={})
    out = tmp_path / "r"
    _fails(
        capsys,
        ["run", str(exp), "--out", str(out), "--workers", "1", "-q"],
        "ZeroDivisionError",
        "bad candidate",
    )
    assert out.exists()  # the folder of a started run stays: its trials are kept


def test_unreachable_storage_hides_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://alice:s3cret@127.0.0.1:1/nas"
    err = _fails(
        capsys,
        ["run", str(experiment(tmp_path, search__storage=url)), "-q", "--out", str(tmp_path / "r")],
        "cannot open storage",
    )
    assert "s3cret" not in err


def test_changed_experiment_leaves_run_untouched(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run_copy)
    exp = experiment(tmp_path, train__lr=0.5)
    _fails(capsys, ["run", str(exp), "--out", str(run_copy), "-q"], "train.lr", "--out")
    assert _snapshot(run_copy) == before


def test_front_where_and_errors(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["front", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "(knee)" in out and "hypervolume" in out
    assert (run_copy / "pareto.png").stat().st_size > 1000
    assert main(["front", str(run_copy), "--where", "params <= 3000", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["front"] and all(p["metrics"]["params"] <= 3000 for p in data["front"])
    _fails(capsys, ["front", str(run_copy), "--where", "latency <= 1"], "unknown metric 'latency'")
    _fails(
        capsys, ["front", str(run_copy), "--where", "params < 0"], "'params < 0' removed the last"
    )
    _fails(capsys, ["front", str(run_copy), "--where", "__import__('os')"], "not allowed")
    _fails(capsys, ["front", str(tmp_path)], "not a run folder")
    _fails(capsys, ["export", str(run_copy), "--select", "9999"], "9999")
    _fails(capsys, ["run", str(QUICK), "--out", str(run_copy), "--workers", "0"], "workers")


def test_worker_bad_input(
    tmp_path: Path, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(capsys, ["worker", str(tmp_path / "nope")], "is not a run folder")
    _fails(capsys, ["worker", str(run_copy), "--workers", "0"], "--workers must be >= 1")


def test_worker_waits_for_nas_run_to_create_the_run(
    tmp_path: Path, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nas worker --wait` started before `nas run` created the folder joins once it exists;
    without --wait (or past it) the one line says to start `nas run` first (issue 24, item 5)."""
    import shutil
    import threading
    import time

    _fails(capsys, ["worker", str(tmp_path / "nope")], "start it first, or give it time")
    t0 = time.monotonic()
    _fails(capsys, ["worker", str(tmp_path / "nope"), "--wait", "1.5", "-q"], "--wait SECONDS")
    assert time.monotonic() - t0 >= 1.5
    later = tmp_path / "later"
    threading.Timer(1.0, shutil.copytree, (run_copy, later)).start()
    assert main(["worker", str(later), "--wait", "60"]) == 0
    err = capsys.readouterr().err
    assert "waiting up to 60 s for `nas run`" in err
    assert "[search] joining: 8 trial(s) complete" in err and "resuming" not in err


def test_worker_on_a_finished_run_adds_nothing(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nas

    before = len(nas.load(str(run_copy)).study().get_trials())
    assert main(["worker", str(run_copy), "--workers", "1", "-q"]) == 0
    assert len(nas.load(str(run_copy)).study().get_trials()) == before


def test_unreachable_ray_address_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = experiment(tmp_path, search__backend="ray", search__address="127.0.0.2:1")
    out = tmp_path / "run"
    _fails(capsys, ["run", str(exp), "--out", str(out)], "cannot reach the Ray cluster")
    assert not out.exists()


def test_a_seeded_one_worker_run_repeats(finished_run: Path, tmp_path: Path) -> None:
    """README: with workers: 1 a seeded run gives the same candidates, in the same order, with
    the same metrics."""
    import nas

    again = nas.run(str(QUICK), out=tmp_path / "again", workers=1, progress=False)

    def trials(study):
        return [(t.number, t.state.name, t.params, t.values) for t in study.get_trials()]

    assert trials(again.study()) == trials(nas.load(str(finished_run)).study())


@pytest.mark.parametrize(("sampler", "workers"), [("nsga2", 1), ("auto", 1), ("random", 2)])
def test_impossible_constraint_stops_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sampler: str, workers: int
) -> None:
    exp = experiment(
        tmp_path,
        constraints={"params": {"max": 10}},  # the smallest mlp has 1,210
        search__trials=100_000,
        search__max_rejections=40,
    )
    argv = ["run", str(exp), "--out", str(tmp_path / "r"), "--sampler", sampler]
    err = _fails(capsys, [*argv, "--workers", str(workers), "-q"], "40 candidates in a row")
    import re

    closest = re.search(r"of them params <= 10 \(the closest had params=(\d+)\)", err)
    assert closest and int(closest.group(1)) >= 1210, err  # 1,210: the smallest candidate
    assert "search.max_rejections" in err
