from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "digits_quick.yaml"


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
