"""Bad input, as a new user gives it: the CLI run from a working folder holding a finished run at
the default relative path ``runs/quick`` and an experiment ``exp.yaml``.

Every case must: exit with code 2, print exactly one line on stderr that starts with ``error:``,
names the problem and the fix (the needles), no traceback, and leave the whole working folder
(the run folder included) byte-identical: nothing created, nothing appended.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from tests.conftest import QUICK

Setup = Callable[[Path], None]

USER_DATA = """
import numpy as np

def data(fault="none"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype("float32")
    y = rng.integers(0, 3, 120)
    if fault == "nan":
        x[5, 2] = np.nan
    if fault == "inf":
        x[7, 1] = np.inf
    if fault == "negative":
        y[3] = -1
    if fault == "ids":
        y = y * 1000 + 7
    if fault == "float":
        y = y + 0.5
    if fault == "onehot":
        y = np.eye(3)[y]
    if fault == "length":
        return (x, y[:-4]), (x[:30], y[:30])
    if fault == "empty":
        return (x[:0], y[:0]), (x[:30], y[:30])
    if fault == "one":
        return (x,), (x, y)
    if fault == "strings":
        return (np.array([["a"] * 8] * 120), y), (x[:30], y[:30])
    return (x, y), (x[:30], y[:30])
"""

USER_DATASET = """
import torch


class Items(torch.utils.data.Dataset):
    def __init__(self, kind):
        self.kind = kind

    def __len__(self):
        return 40

    def __getitem__(self, i):
        if self.kind == "str":
            return "pixels", i % 3
        if self.kind == "nan":
            return torch.full((1, 8, 8), float("nan")), i % 3
        if self.kind == "negative":
            return torch.zeros(1, 8, 8), -1
        return torch.zeros(1, 8, 8), i % 3


def data(kind="ok"):
    return Items(kind), Items("ok")
"""

USER_SPACE = """
import math

import torch
from torch import nn


class Wrong(nn.Module):
    def __init__(self, features, out_shape):
        super().__init__()
        self.lin = nn.Linear(features, math.prod(out_shape))
        self.out_shape = out_shape

    def forward(self, x):
        return self.lin(x.flatten(1)).reshape(x.shape[0], *self.out_shape)


def width(trial, *, input_shape, num_classes, **kw):
    trial.suggest_int("w", 1, 4)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 2))


def three_d(trial, *, input_shape, num_classes, **kw):
    trial.suggest_int("w", 1, 4)
    return Wrong(math.prod(input_shape), (num_classes, 2))


def tuple_out(trial, *, input_shape, num_classes, **kw):
    trial.suggest_int("w", 1, 4)

    class T(nn.Module):
        def forward(self, x):
            return (x.flatten(1)[:, :num_classes], None)

    return T()


def bad_input(trial, *, input_shape, num_classes, **kw):
    trial.suggest_int("w", 1, 4)
    return nn.Sequential(nn.Flatten(), nn.Linear(99, num_classes))


def not_a_module(trial, *, input_shape, num_classes, **kw):
    return "a model"


def raises_value(trial, *, input_shape, num_classes, depth=1, **kw):
    raise ValueError(f"depth must be <= 3, got {depth}")
"""


def _exp(changes: dict[str, object], name: str = "exp.yaml") -> Setup:
    """``digits_quick.yaml`` with ``changes`` (``a__b`` is the nested key a.b) as NAME."""

    def setup(cwd: Path) -> None:
        data = yaml.safe_load(QUICK.read_text())
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split("__")
            for key in parents:
                node = node.setdefault(key, {})
            if value is _DELETE:
                node.pop(last, None)
            else:
                node[last] = value
        (cwd / name).write_text(yaml.safe_dump(data))

    return setup


_DELETE = object()


def _text(name: str, content: str | bytes) -> Setup:
    def setup(cwd: Path) -> None:
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def _all(*setups: Setup) -> Setup:
    def setup(cwd: Path) -> None:
        for s in setups:
            s(cwd)

    return setup


def _user_data(fault: str, **changes: object) -> Setup:
    return _all(
        _text("mydata.py", USER_DATA),
        _exp({"data": {"name": "mydata.py:data", "args": {"fault": fault}}, **changes}),
    )


def _user_items(kind: str) -> Setup:
    return _all(
        _text("myitems.py", USER_DATASET),
        _exp({"data": {"name": "myitems.py:data", "args": {"kind": kind}}}),
    )


def _user_space(fn: str) -> Setup:
    return _all(
        _text("myspace.py", USER_SPACE),
        _exp({"space": {"name": f"myspace.py:{fn}"}}),
    )


def _edit_run(edit: Callable[[Path], None]) -> Setup:
    def setup(cwd: Path) -> None:
        edit(cwd / "runs" / "quick")

    return setup


def _write_yaml(path: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / path).write_text(text)


def _no_study(run: Path) -> None:
    (run / "study.journal").unlink()


def _garbage_study(run: Path) -> None:
    (run / "study.journal").write_text("this is not a journal\n")


def _other_directions(run: Path) -> None:
    data = yaml.safe_load((run / "experiment.yaml").read_text())
    data["objectives"] = {"accuracy": "maximize", "flops": "minimize", "params": "minimize"}
    (run / "experiment.yaml").write_text(yaml.safe_dump(data))


NOT_JOURNAL = _text("notes.txt", "my notes, not a study\n")
RUN = "runs/quick"

# (id, setup, argv, needles): needles must all appear in the one stderr line
CASES: list[tuple[str, Setup | None, list[str], tuple[str, ...]]] = [
    # ---- the command line ----
    ("unknown-command", None, ["frnt", RUN], ("No such command",)),
    ("run-no-argument", None, ["run"], ("Missing argument",)),
    ("run-missing-yaml", None, ["run", "nope.yaml"], ("does not exist", "YAML")),
    ("run-folder-as-yaml", _text("adir/x", "x"), ["run", "adir"], ("adir",)),
    ("run-workers-zero", _exp({}), ["run", "exp.yaml", "--workers", "0"], ("workers",)),
    ("run-workers-text", _exp({}), ["run", "exp.yaml", "--workers", "two"], ("--workers",)),
    ("run-trials-negative", _exp({}), ["run", "exp.yaml", "--trials", "-3"], ("trials",)),
    ("run-sampler", _exp({}), ["run", "exp.yaml", "--sampler", "cma"], ("--sampler", "auto")),
    ("run-backend", _exp({}), ["run", "exp.yaml", "--backend", "slurm"], ("--backend",)),
    ("run-timeout-negative", _exp({}), ["run", "exp.yaml", "--timeout", "-5"], ("timeout",)),
    ("run-unknown-option", _exp({}), ["run", "exp.yaml", "--epochs", "3"], ("--epochs",)),
    (
        "run-out-is-a-file",
        _all(_exp({}), _text("taken.txt", "x")),
        ["run", "exp.yaml", "--out", "taken.txt"],
        ("taken.txt", "--out"),
    ),
    (
        "run-out-not-a-run-folder",
        _all(_exp({}), _text("other/keep.txt", "x")),
        ["run", "exp.yaml", "--out", "other"],
        ("not a run folder", "--out"),
    ),
    (
        "run-out-other-experiment",
        _exp({"train__epochs": 1}),
        ["run", "exp.yaml", "--out", RUN],
        ("different experiment", "train.epochs"),
    ),
    ("storage-not-url", _exp({}), ["run", "exp.yaml", "--storage", "nope nope"], ("valid URL",)),
    (
        "storage-journal-not-a-journal",
        _all(_exp({}), NOT_JOURNAL),
        ["run", "exp.yaml", "--storage", "journal:notes.txt"],
        ("not a study journal", "notes.txt"),
    ),
    (
        "storage-unreachable-db",
        _exp({}),
        ["run", "exp.yaml", "--storage", "postgresql://u:pw@127.0.0.1:1/db"],
        ("cannot open storage", "***"),
    ),
    (
        "storage-sqlite-folder-missing",
        _exp({}),
        ["run", "exp.yaml", "--storage", "sqlite:////nonexistent/dir/s.db"],
        ("cannot open storage",),
    ),
    # ---- the YAML ----
    ("yaml-invalid", _text("exp.yaml", "space: [cnn\n"), ["run", "exp.yaml"], ("invalid YAML",)),
    ("yaml-not-utf8", _text("exp.yaml", b"name: caf\xe9\n"), ["run", "exp.yaml"], ("UTF-8",)),
    ("yaml-empty", _text("exp.yaml", ""), ["run", "exp.yaml"], ("mapping",)),
    ("yaml-list", _text("exp.yaml", "- a\n- b\n"), ["run", "exp.yaml"], ("mapping",)),
    (
        "yaml-duplicate-key",
        _text("exp.yaml", "space: {name: mlp}\nspace: {name: cnn}\n"),
        ["run", "exp.yaml"],
        ("duplicate key", "line 2"),
    ),
    ("yaml-unknown-key", _exp({"serch": {}}), ["run", "exp.yaml"], ("unknown key 'serch'",)),
    ("yaml-no-space", _exp({"space": _DELETE}), ["run", "exp.yaml"], ("space",)),
    (
        "yaml-unknown-space",
        _exp({"space__name": "resnet9000"}),
        ["run", "exp.yaml"],
        ("resnet9000",),
    ),
    ("yaml-objective", _exp({"objectives": {"acc": "maximize"}}), ["run", "exp.yaml"], ("'acc'",)),
    (
        "yaml-direction",
        _exp({"objectives": {"accuracy": "biggest"}}),
        ["run", "exp.yaml"],
        ("accuracy",),
    ),
    (
        "yaml-constraint-order",
        _exp({"constraints": {"params": {"min": 9, "max": 1}}}),
        ["run", "exp.yaml"],
        ("min <= max",),
    ),
    (
        "yaml-constraint-unknown",
        _exp({"constraints": {"watts": {"max": 1}}}),
        ["run", "exp.yaml"],
        ("watts",),
    ),
    ("yaml-name-escapes", _exp({"name": "../../elsewhere"}), ["run", "exp.yaml"], ("folder name",)),
    (
        "yaml-nan-bound",
        _exp({"constraints": {"params": {"max": float("nan")}}}),
        ["run", "exp.yaml"],
        ("constraints.params.max", "finite"),
    ),
    ("yaml-inf-lr", _exp({"train__lr": float("inf")}), ["run", "exp.yaml"], ("train.lr", "finite")),
    ("yaml-epochs-zero", _exp({"train__epochs": 0}), ["run", "exp.yaml"], ("train.epochs",)),
    ("yaml-device", _exp({"train__device": "tpu"}), ["run", "exp.yaml"], ("device",)),
    ("yaml-no-cuda", _exp({"train__device": "cuda:7"}), ["run", "exp.yaml"], ("cuda",)),
    ("yaml-lr-text", _exp({"train__lr": "fast"}), ["run", "exp.yaml"], ("train.lr",)),
    (
        "yaml-val-fraction",
        _exp({"data__val_fraction": 1.5}),
        ["run", "exp.yaml"],
        ("val_fraction",),
    ),
    ("yaml-technique", _exp({"compression": {"prune": {}}}), ["run", "exp.yaml"], ("'prune'",)),
    (
        "yaml-val-too-small",  # no model could be told from guessing: nothing would be feasible
        _exp({"data__subset": {"train": 200, "val": 3}}),
        ["run", "exp.yaml"],
        ("validation split has 3 example(s)", "data.subset.val"),
    ),
    (
        "yaml-bits-range",
        _exp({"compression": {"quantize": {"bits": [4, 32]}}}),
        ["run", "exp.yaml"],
        ("bits", "32 is outside [2, 8]", "optional: true"),  # how to search float32 too
    ),
    (
        "yaml-slimming-no-bn",
        _exp({"compression": {"slimming": {}}}),
        ["run", "exp.yaml"],
        ("slimming cannot apply",),
    ),
    ("yaml-max-rejections", _exp({"search__max_rejections": 0}), ["run", "exp.yaml"], ("max_rej",)),
    # ---- data ----
    ("data-unknown", _exp({"data__name": "imagenet22k"}), ["run", "exp.yaml"], ("imagenet22k",)),
    (
        "data-root-missing",
        _exp({"data__name": "fashion-mnist", "data__root": "/nonexistent/fm"}),
        ["run", "exp.yaml"],
        ("/nonexistent/fm",),
    ),
    ("data-nan", _user_data("nan"), ["run", "exp.yaml"], ("NaN", "train split")),
    ("data-inf", _user_data("inf"), ["run", "exp.yaml"], ("infinite",)),
    ("data-negative-label", _user_data("negative"), ["run", "exp.yaml"], ("negative", "0..C-1")),
    ("data-id-labels", _user_data("ids"), ["run", "exp.yaml"], ("look like ids",)),
    ("data-float-labels", _user_data("float"), ["run", "exp.yaml"], ("integer class indices",)),
    ("data-one-hot", _user_data("onehot"), ["run", "exp.yaml"], ("one-hot", "argmax")),
    ("data-lengths", _user_data("length"), ["run", "exp.yaml"], ("120 examples", "116 labels")),
    ("data-empty", _user_data("empty"), ["run", "exp.yaml"], ("empty",)),
    ("data-not-pairs", _user_data("one"), ["run", "exp.yaml"], ("(x, y) pair",)),
    ("data-strings", _user_data("strings"), ["run", "exp.yaml"], ("numeric",)),
    ("data-items-not-tensors", _user_items("str"), ["run", "exp.yaml"], ("not a tensor",)),
    ("data-items-nan", _user_items("nan"), ["run", "exp.yaml"], ("NaN", "train split")),
    ("data-items-negative", _user_items("negative"), ["run", "exp.yaml"], ("labels from -1",)),
    ("data-bad-arg", _user_data("none", data__args={"nope": 1}), ["run", "exp.yaml"], ("nope",)),
    (
        "data-missing-file",
        _exp({"data__name": "gone.py:data"}),
        ["run", "exp.yaml"],
        ("gone.py", "does not exist"),
    ),
    # ---- the user's space ----
    ("space-output-width", _user_space("width"), ["run", "exp.yaml"], ("(2, 12)", "classes")),
    ("space-3d-output", _user_space("three_d"), ["run", "exp.yaml"], ("(2, 10, 2)", "flatten")),
    ("space-tuple-output", _user_space("tuple_out"), ["run", "exp.yaml"], ("tuple", "logits")),
    ("space-wrong-input", _user_space("bad_input"), ["run", "exp.yaml"], ("input_shape",)),
    ("space-not-module", _user_space("not_a_module"), ["run", "exp.yaml"], ("nn.Module",)),
    ("space-raises", _user_space("raises_value"), ["run", "exp.yaml"], ("depth must be",)),
    ("space-no-function", _user_space("nothing"), ["run", "exp.yaml"], ("nothing",)),
    (
        "space-module-missing",
        _exp({"space__name": "no_such_pkg.spaces:cnn"}),
        ["run", "exp.yaml"],
        ("no_such_pkg",),
    ),
    ("space-bad-spec", _exp({"space__name": "file.py:"}), ["run", "exp.yaml"], ("file.py",)),
    # ---- commands on run folders ----
    ("front-missing-folder", None, ["front", "runs/nope"], ("not a run folder",)),
    ("front-not-a-run", _text("plain/x.txt", "x"), ["front", "plain"], ("not a run folder",)),
    ("front-where-syntax", None, ["front", RUN, "--where", "params <<= 3"], ("--where",)),
    ("front-where-metric", None, ["front", RUN, "--where", "watts <= 3"], ("watts",)),
    ("front-where-none", None, ["front", RUN, "--where", "params <= 1"], ("params",)),
    ("front-best-unknown", None, ["front", RUN, "--best", "watts"], ("watts",)),
    ("front-best-and-knee", None, ["front", RUN, "--best", "accuracy", "--knee"], ("only one",)),
    ("front-no-study", _edit_run(_no_study), ["front", RUN], ("no study", "nas run")),
    ("front-garbage-study", _edit_run(_garbage_study), ["front", RUN], ("not a study journal",)),
    (
        "front-other-directions",
        _edit_run(_other_directions),
        ["front", RUN],
        ("optimises", "--out"),
    ),
    (
        "front-broken-experiment",
        _edit_run(_write_yaml("experiment.yaml", "objectives: [\n")),
        ["front", RUN],
        ("invalid YAML",),
    ),
    ("export-select-text", None, ["export", RUN, "--select", "abc"], ("--select",)),
    ("export-select-missing", None, ["export", RUN, "--select", "999"], ("999", "nas front")),
    (
        "export-select-and-best",
        None,
        ["export", RUN, "--select", "1", "--best", "accuracy"],
        ("--select",),
    ),
    (
        "export-to-a-file",
        _text("file.txt", "x"),
        ["export", RUN, "--to", "file.txt", "-q"],
        ("file.txt", "folder"),
    ),
    ("report-to-pdf", None, ["report", RUN, "--to", "r.pdf"], (".html",)),
    ("export-select-empty", None, ["export", RUN, "--select", " "], ("selects no model",)),
    (
        "storage-journal-empty",
        _exp({}),
        ["run", "exp.yaml", "--storage", "journal:"],
        ("names no file",),
    ),
    ("report-to-a-folder", _text("outdir/x", "x"), ["report", RUN, "--to", "outdir"], ("outdir",)),
    ("report-no-study", _edit_run(_no_study), ["report", RUN], ("no study",)),
    ("finalize-epochs", None, ["finalize", RUN, "--epochs", "0"], ("epochs",)),
    ("finalize-select", None, ["finalize", RUN, "--select", "x y"], ("--select",)),
    ("finalize-workers", None, ["finalize", RUN, "--workers", "0"], ("--workers",)),
    ("worker-no-study", _edit_run(_no_study), ["worker", RUN], ("no study", "nas run")),
    ("worker-workers", None, ["worker", RUN, "--workers", "0"], ("--workers",)),
    ("worker-wait-negative", None, ["worker", RUN, "--wait", "-1"], ("--wait", "x>=0")),
    ("worker-not-a-run", _text("plain/x.txt", "x"), ["worker", "plain"], ("not a run folder",)),
    ("doctor-not-a-run", _text("plain/x.txt", "x"), ["doctor", "plain"], ("not a run folder",)),
    ("doctor-no-study", _edit_run(_no_study), ["doctor", RUN], ("no study",)),
    ("compare-missing", None, ["compare", RUN, "runs/nope"], ("runs/nope",)),
    ("dashboard-port", None, ["dashboard", RUN, "--port", "99999"], ("port",)),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): (
            "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def cwd(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the finished run at the default relative path runs/quick."""
    shutil.copytree(finished_run, tmp_path / "runs" / "quick")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_there_are_at_least_60_distinct_cases() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


@pytest.mark.parametrize(
    ("setup", "argv", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(
    cwd: Path,
    capsys: pytest.CaptureFixture[str],
    setup: Setup | None,
    argv: list[str],
    needles: tuple[str, ...],
) -> None:
    if setup is not None:
        setup(cwd)
    before = _snapshot(cwd)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit {code}: {err or captured.out[-500:]}"
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert _snapshot(cwd) == before, "the working folder changed"
