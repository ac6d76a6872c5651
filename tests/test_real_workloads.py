"""As a user with their own network and data runs it: ``nas run`` + ``nas export`` from a
temporary cwd on an image folder with a torchvision model, and on a CIFAR-format folder with a
timm ViT; bad input of these kinds is one line, exit 2, and no run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas.cli import main
from nas.image_writers import write_cifar, write_imagefolder

CLASSES = ["a", "b", "c"]


def _images(n: int, seed: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, (n, 3, side, side)) + y[:, None, None, None] * 80
    return x.astype(np.uint8), y


def _write(path: Path, exp: dict) -> Path:
    path.write_text(yaml.safe_dump(exp))
    return path


def _base(data: dict, space: dict, compression: dict) -> dict:
    return {
        "name": "real",
        "data": {**data, "loader": {"workers": 0}},
        "space": space,
        "compression": compression,
        # enough steps to beat guessing on 30 validation images (brightness tells the classes)
        "train": {"steps": 24, "batch_size": 8, "lr": 0.003},
        "objectives": ["accuracy", "flops"],
        "search": {"trials": 2, "workers": 1},
        "export": {"tolerance": 0.05},
    }


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_and_export(exp_file: Path) -> list[Path]:
    assert main(["run", str(exp_file)]) == 0
    assert main(["export", "runs/real", "--select", "front"]) == 0  # re-verified in onnxruntime
    return sorted(Path("runs/real/exports").glob("trial-*"))


def test_image_folder_with_torchvision_resnet18(in_tmp: Path) -> None:
    splits = {"train": _images(24, 0, 8), "val": _images(30, 1, 8), "test": _images(9, 2, 8)}
    write_imagefolder(in_tmp / "imgs", splits, CLASSES)
    exp = _base(
        {"name": "imagefolder", "root": "imgs", "transforms": {"size": 8}},
        {"name": "torchvision", "args": {"model": "resnet18"}},
        {"slimming": {"ratio": [0.3, 0.5], "finetune": 0.5}, "quantize": {"bits": [4, 8]}},
    )
    exports = _run_and_export(_write(in_tmp / "exp.yaml", exp))
    assert exports
    for folder in exports:
        config = json.loads((folder / "config.json").read_text())
        assert config["preprocessing"]["input_size"] == [3, 8, 8]
        assert config["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert "slimming" in config["compression"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert 0.0 <= metrics["exported"]["test_accuracy"] <= 1.0
        # slimming made the deployed model physically smaller than its unslimmed architecture
        from nas.space import rebuild_from_config

        slim = torch.load(folder / "model.pt", weights_only=False)
        full = rebuild_from_config(config)
        assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in full.parameters())
    from nas.runs import Run

    run = Run.open("runs/real")
    done = [t for t in run.study().trials if t.state.name == "COMPLETE"]
    assert done and all(t.user_attrs["device"] == "cpu" for t in done)
    assert all("accuracy_before_compression" in t.user_attrs for t in done)


def test_cifar_folder_with_timm_vit(in_tmp: Path) -> None:
    write_cifar(in_tmp / "cifar", _images(60, 0, 32), _images(12, 1, 32), CLASSES)
    exp = _base(
        {
            "name": "cifar10",
            "root": "cifar",
            "val_fraction": 0.5,  # 30 validation images
            "transforms": {"size": 16, "crop": "pad"},
        },
        {
            "name": "timm",
            "args": {
                "model": "vit_tiny_patch16_224",
                "patch_size": 4,
                "choices": {"depth": [1, 2]},
            },
        },
        {"quantize": {"bits": [8, 8]}},
    )
    exports = _run_and_export(_write(in_tmp / "exp.yaml", exp))
    assert exports and all((f / "model.int8.onnx").is_file() for f in exports)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"space": {"name": "torchvision", "args": {"model": "resnt18"}}}, "closest: resnet18"),
        ({"train": {"device": "cuda"}}, "no CUDA GPU"),
        (
            {"space": {"name": "timm", "args": {"model": "vit_tiny_patch16_224", "patch_size": 4}}},
            "compression.slimming cannot apply",
        ),
        ({"data": {"name": "imagefolder", "root": "nowhere"}}, "does not exist"),
        ({"data": {"name": "cifar100", "root": "imgs"}}, "nothing downloads"),
        (
            {"space": {"name": "torchvision", "args": {"model": "resnet18", "weights": "default"}}},
            "not on this machine",
        ),
    ],
    ids=["name", "cuda", "technique", "root", "cifar", "weights"],
)
def test_bad_real_input_is_one_line(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], change: dict, needle: str
) -> None:
    if "device" in str(change) and torch.cuda.is_available():
        pytest.skip("CUDA is here")
    write_imagefolder(
        in_tmp / "imgs", {"train": _images(12, 0, 8), "val": _images(6, 1, 8)}, CLASSES
    )
    exp = _base(
        {"name": "imagefolder", "root": "imgs"},
        {"name": "torchvision", "args": {"model": "resnet18"}},
        {"slimming": {"ratio": [0.3, 0.5]}},
    )
    code = main(["run", str(_write(in_tmp / "exp.yaml", exp | change))])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not Path("runs").exists()
