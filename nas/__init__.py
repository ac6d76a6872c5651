"""nas: search for efficient neural networks.

import nas
run = nas.run("experiments/fashion_mnist.yaml", workers=2)
run.front(where="latency_ms < 1").export("out/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["NasError", "Run", "__version__", "load", "run", "search"]

from nas.errors import NasError

if TYPE_CHECKING:
    from nas.run import Run


def run(path: str, **kwargs: Any) -> Run:
    """Run or resume an experiment; see :func:`nas.run.run`."""
    from nas.run import run as _run

    return _run(path, **kwargs)


def load(run_dir: str) -> Run:
    """Open an existing run folder."""
    from nas.run import Run

    return Run.open(run_dir)


def search(*args: Any, **kwargs: Any) -> Any:
    """Search over anything; see :func:`nas.api.search`."""
    from nas.api import search as _search

    return _search(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from nas.run import Run

        return Run
    raise AttributeError(name)
