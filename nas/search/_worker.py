"""The worker loop: ask -> sample -> cheap metrics -> (reject | evaluate) -> tell.

Several workers (processes, possibly on several hosts) run this loop on one study. A file lock
around "count + ask" makes the number of trials exact; each trial records which process runs it,
so a trial left RUNNING by a dead process can be failed and retried (:func:`recover_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nas.errors import NasError
from nas.search._problem import Problem, Rejected, describe_violation, violations

MAX_CONSECUTIVE_ERRORS = 3


class TrialError(NasError):
    """Candidates keep failing with the same kind of error: stop and say why."""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict[str, object]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}


def is_alive(ident: dict[str, object]) -> bool:
    """Whether the process that took a trial still runs (unknown hosts count as alive)."""
    if ident.get("host") != socket.gethostname():
        return True
    pid = int(ident.get("pid", -1))  # type: ignore[arg-type]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return ident.get("start") is None or _proc_start(pid) == ident.get("start")


def recover_stale(study: optuna.Study, lock: Path, *, own: bool = False) -> list[int]:
    """Fail RUNNING trials whose process is dead and enqueue their params to retry them.

    With ``own=True``, the trials of this very process are released instead (on Ctrl-C).
    """
    recovered = []
    me = worker_identity()
    with file_lock(lock):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            ident = t.user_attrs.get("worker")
            if ident is None or (ident != me if own else is_alive(ident)):
                continue
            why = "interrupted" if own else "worker process died"
            study._storage.set_trial_user_attr(t._trial_id, "error", why)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            recovered.append(t.number)
    return recovered


@dataclass
class Counts:
    complete: int
    running: int
    rejected: int
    failed: int


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    n = {s: 0 for s in TrialState}
    for t in trials:
        n[t.state] += 1
    return Counts(
        n[TrialState.COMPLETE], n[TrialState.RUNNING], n[TrialState.PRUNED], n[TrialState.FAIL]
    )


def run_loop(
    study: optuna.Study,
    problem: Problem,
    *,
    n_trials: int,
    lock: Path,
    deadline: float | None = None,
    on_tell: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    max_rejected: int | None = None,
) -> None:
    """Run trials until ``n_trials`` are COMPLETE in the study (all workers together)."""
    names = list(problem.directions)
    max_rejected = max_rejected if max_rejected is not None else 20 * n_trials
    errors: list[str] = []
    ident = worker_identity()
    while deadline is None or time.time() < deadline:
        with file_lock(lock):
            c = counts(study)
            if c.complete + c.running >= n_trials or c.rejected >= max_rejected:
                return
            trial = study.ask()
            trial.set_user_attr("worker", ident)
        t0 = time.perf_counter()
        try:
            candidate = problem.sample(trial)
            trial.set_user_attr("sample_seconds", time.perf_counter() - t0)
            metrics = problem.static(candidate)
            reason = describe_violation(problem.constraints, metrics)
            if reason is not None:
                raise Rejected(reason, metrics)
            metrics.update(problem.evaluate(candidate, trial))
        except Rejected as rej:
            for name, value in violations(problem.constraints, rej.metrics).items():
                trial.set_constraint(name, value)
            trial.set_user_attr("metrics", rej.metrics)
            trial.set_user_attr("rejected", rej.reason)
            trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
            frozen = study.tell(trial, state=TrialState.PRUNED)
        except Exception as err:
            msg = f"{type(err).__name__}: {err}"
            trial.set_user_attr("error", msg)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            study.tell(trial, state=TrialState.FAIL)
            errors.append(msg)
            if len(errors) >= MAX_CONSECUTIVE_ERRORS:
                raise TrialError(
                    f"{len(errors)} trials in a row failed, last (trial "
                    f"{trial.number}) with {msg}; fix the space or experiment "
                    f"(tracebacks are in the study's trial attributes)"
                ) from None
            continue
        else:
            missing = [n for n in problem.constraints if n not in metrics]
            if missing:
                raise NasError(
                    f"constraint(s) on {missing} name no metric the trial produced "
                    f"({sorted(metrics)}); fix the constraint's name"
                )
            missing = [n for n in names if n not in metrics]
            if missing:
                raise NasError(
                    f"evaluation returned no value for objective(s) {missing}; "
                    f"return every objective in the metrics dict"
                )
            trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
            for name, value in violations(problem.constraints, metrics).items():
                trial.set_constraint(name, value)  # <= 0 is feasible; samplers read these
            trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
            frozen = study.tell(trial, [float(metrics[n]) for n in names])
            errors.clear()
        if on_tell is not None:
            on_tell(frozen)
