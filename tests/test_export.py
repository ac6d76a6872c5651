"""Export: files, rebuild from config.json, ONNX re-verification that fails loudly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nas.cli import main
from nas.export import ExportVerificationError
from nas.runs import Run
from nas.space import rebuild, resolve_space


def test_export_knee_rebuilds_from_config(run_copy: Path, tmp_path: Path) -> None:
    rf = Run.open(run_copy).front()
    (d,) = rf.export(tmp_path / "out", select="knee", progress=False)
    assert d.name == f"trial-{rf.knee().number:05d}"
    config = json.loads((d / "config.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text())
    model = rebuild(
        resolve_space(config["space"]),
        config["params"],
        input_shape=tuple(config["input_shape"]),
        num_classes=config["num_classes"],
        args=config["args"],
    )
    model.load_state_dict(load_file(d / "weights.safetensors"))
    model.eval()
    x = torch.rand(3, *config["input_shape"])
    from nas.onnx_utils import session

    onnx_out = session(d / "model.onnx").run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, model(x).detach().numpy(), atol=1e-4)
    exported = metrics["exported"]
    assert exported["params"] == metrics["search"]["params"]
    assert exported["params_deployed"] == exported["params"]  # an MLP has no BatchNorm to fold
    assert exported["size_bytes"] == 4 * exported["params_deployed"]
    assert exported["latency_ms_batch1"] > 0 and exported["latency_spread_batch1"] >= 0
    assert abs(metrics["exported"]["test_accuracy"] - metrics["search"]["test_accuracy"]) <= 0.005


def test_export_selects_trial_numbers(run_copy: Path, tmp_path: Path) -> None:
    rf = Run.open(run_copy).front()
    numbers = sorted(p.number for p in rf.front.candidates)[:2]
    dirs = rf.export(tmp_path / "out", select=" ".join(map(str, numbers)), progress=False)
    assert [int(d.name.split("-")[1]) for d in dirs] == numbers
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["trial"] for r in summary] == numbers


def test_export_fails_loudly_when_onnx_disagrees(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    knee = Run.open(run_copy).front().knee().number
    weights = run_copy / "weights" / f"trial-{knee:05d}.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.zeros_like(v) for k, v in tensors.items()}, weights)  # a broken model
    with pytest.raises(ExportVerificationError, match="not exported"):
        Run.open(run_copy).front().export(tmp_path / "out", select="knee", progress=False)
    assert not (tmp_path / "out" / f"trial-{knee:05d}").exists()
    assert main(["export", str(run_copy), "--select", "knee", "--to", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "not exported" in err and "Traceback" not in err


def test_export_missing_weights_is_bad_input(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    knee = Run.open(run_copy).front().knee().number
    (run_copy / "weights" / f"trial-{knee:05d}.safetensors").unlink()
    assert main(["export", str(run_copy), "--select", "knee", "--to", str(tmp_path / "o")]) == 2
    assert "weights of trial" in capsys.readouterr().err


def test_front_json_carries_every_metric_and_the_export(run_copy: Path, capsys) -> None:
    """params is the objective; flops and size_bytes are recorded anyway, and an exported model
    brings its re-measured metrics."""
    assert main(["export", str(run_copy), "--select", "knee", "-q"]) == 0
    capsys.readouterr()
    assert main(["front", str(run_copy), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["front"]
    assert all(
        {"flops", "params", "size_bytes", "test_accuracy"} <= set(r["metrics"]) for r in rows
    )
    knee = Run.open(run_copy).front().knee().number
    (row,) = [r for r in rows if r["number"] == knee]
    assert {"latency_ms_batch1", "params_deployed", "onnx_file_bytes"} <= set(row["exported"])
    assert all("exported" not in r for r in rows if r["number"] != knee)
