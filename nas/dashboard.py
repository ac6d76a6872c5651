"""``nas dashboard``: optuna-dashboard on a run's study, bound to 127.0.0.1."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from nas.errors import NasError
from nas.search._storage import open_storage

if TYPE_CHECKING:
    from nas.runs import Run

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve_dashboard(run: Run, port: int = 0, announce: Callable[[str], object] = print) -> None:
    """Serve the dashboard until interrupted; ``port`` 0 picks a free one.

    The study gets its objective names (Optuna's ``metric_names``) when it has none, so the
    dashboard labels the axes ``accuracy``, ``flops``... instead of ``Objective 0``.
    """
    import optuna_dashboard

    if port < 0 or port > 65535:
        raise NasError(f"--port {port} is not a port number; pass 1..65535 or omit it")
    study = run.study()  # read-only: a run folder without a study is refused, never created
    if study.metric_names is None:
        study = run.study(writable=True)
        study.set_metric_names(list(run.directions))
    port = port or free_port()
    storage = open_storage(run.exp.search.storage, run.dir)
    announce(f"optuna-dashboard for {run.dir}: http://{HOST}:{port}/dashboard/ (Ctrl-C stops it)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna_dashboard.run_server(storage, host=HOST, port=port)
    except OSError as e:
        raise NasError(
            f"cannot serve on {HOST}:{port} ({e.strerror}); pass another --port"
        ) from None
