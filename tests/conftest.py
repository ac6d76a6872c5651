from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import clusters
from tests.clusters import RayCluster

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "digits_quick.yaml"

# every technique's knobs at a moderate setting (tests that apply each registered technique)
MODERATE_KNOBS: dict[str, dict[str, object]] = {
    "slimming": {"ratio": 0.3, "strength": 1e-4},
    "filter_pruning": {"ratio": 0.3, "criterion": "l1"},
    "head_pruning": {"heads": 0.3, "neurons": 0.3, "criterion": "l1"},
    "lowrank": {"rank": 0.5},
    "tucker": {"rank": 0.5},
    "cp": {"rank": 0.5},
    "quantize": {"bits": 8},
    "unstructured": {"sparsity": 0.5, "criterion": "magnitude", "schedule": "oneshot"},
    "dns": {"sparsity": 0.5},
    "binarize": {"mode": "binary", "activations": "binary"},
    "ptq": {"calibration": "minmax"},
    "dfq": {},
    "weight_sharing": {"bits": 4},
    "deep_compression": {"sparsity": 0.8, "bits": 4},
    "distill": {},  # a training option: apply leaves the model as it is
}


def experiment(folder: Path, **changes: object) -> Path:
    """digits_quick.yaml with ``changes`` applied, written to ``folder / "exp.yaml"``.

    A key names a top-level entry (``constraints={...}`` replaces it) or, with ``__`` between the
    levels, one nested entry (``search__trials=3`` changes only ``search.trials``).
    """
    data = yaml.safe_load(QUICK.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed digits_quick run (1 worker, in-process); tests must not modify it."""
    import nas

    out = tmp_path_factory.mktemp("runs") / "quick"
    nas.run(str(QUICK), out=out, workers=1, progress=False)
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests need CUDA: skipped cleanly where torch sees no GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A 2-node Ray cluster on loopback for the module's tests (``tests/clusters.py``)."""
    if not clusters.RAY.exists():
        pytest.skip("ray is not installed in this environment")
    with clusters.ray_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A private PostgreSQL server on 127.0.0.1; yields a URL (trust auth, so any password)."""
    if clusters.pg_bin() is None:
        pytest.skip("PostgreSQL is not installed; the README's set-up installs it (postgresql)")
    with clusters.postgres_server() as url:
        yield url
