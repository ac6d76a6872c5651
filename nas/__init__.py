"""nas: search for efficient neural networks.

import nas
run = nas.run("experiments/fashion_mnist.yaml", workers=2)
run.front(where="latency_ms < 1").export("out/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["NasError", "Run", "__version__", "load", "run", "search"]

import nas.search as _search_package  # noqa: F401  (first, so that `nas.search` is the function)
from nas.errors import NasError

if TYPE_CHECKING:
    from nas.runs import Run


def run(path: str, **kwargs: Any) -> Run:
    """Run or resume an experiment; see :func:`nas.runs.run`."""
    from nas.runs import run as _run

    return _run(path, **kwargs)


def load(run_dir: str) -> Run:
    """Open an existing run folder."""
    from nas.runs import Run

    return Run.open(run_dir)


def search(*args: Any, **kwargs: Any) -> Any:
    """Search over anything: ``space(trial) -> candidate``, ``evaluate(candidate) -> metrics``
    (or ``evaluate(candidate, report)`` for multi-fidelity).

    See :func:`nas.api.search` for the arguments. (The drivers live in the package
    ``nas.search``; this function shadows it as an attribute of ``nas``.)
    """
    from nas.api import search as _search

    return _search(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from nas.runs import Run

        return Run
    raise AttributeError(name)
