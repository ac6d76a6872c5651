"""The worker loop: ask -> sample -> cheap metrics -> (reject | evaluate) -> tell.

Several workers (processes, possibly on several hosts) run this loop on one study. A file lock
around "count + ask" makes the number of trials exact; each trial records which process runs it,
so a trial left RUNNING by a dead process can be failed and retried (:func:`recover_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import numbers
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.config import Bound
from nas.errors import NasError
from nas.search._fidelity import MOASHA, Reporter, Stopped
from nas.search._problem import (
    SAMPLED,
    Problem,
    Rejected,
    describe_bound,
    describe_violation,
    fully_drawn,
    violations,
)
from nas.search._process import is_alive, worker_identity
from nas.search._proposal import ProposedSampler, Proposer, params_key, read_history
from nas.search._storage import (
    adopt_silent,
    fail_lost_trial,
    fail_stale,
    heartbeat_thread,
    heartbeats_on,
    poll_seconds,
)

MAX_CONSECUTIVE_ERRORS = 3  # the same mistake this many times in a row stops the search
MAX_CONSECUTIVE_FAILURES = 10  # ... and so do this many failures of any kind
ADVISORY_LOCK_KEY = 0x6E6173_0000  # "nas" + the study id: one PostgreSQL advisory lock per study
log = logging.getLogger("nas.search")


LOCK_FILE = ".ask.lock"  # in the run folder: workers ask for trials under it (see ask_lock)


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


@contextlib.contextmanager
def ask_lock(study: optuna.Study, path: Path) -> Iterator[None]:
    """The lock around "count + ask": a PostgreSQL advisory lock when the study lives in
    PostgreSQL (workers on every host share it), else a file lock (one host)."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    engine = getattr(backend, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        with file_lock(path):
            yield
        return
    from sqlalchemy import text

    key = ADVISORY_LOCK_KEY + study._study_id
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def recover_stale(study: optuna.Study, lock: Path, *, own: bool = False) -> list[int]:
    """Fail RUNNING trials whose process is dead and enqueue their params to retry them.

    A RUNNING trial with no ``worker`` tag, seen under the ask lock, was asked by a process that
    died before tagging it (ask and tag happen under that lock): it is recovered too.
    With ``own=True``, the trials of this very process are released instead (on Ctrl-C).
    """
    with ask_lock(study, lock):
        return fail_dead(study, own=own, untagged=True)


def fail_dead(study: optuna.Study, *, own: bool = False, untagged: bool = False) -> list[int]:
    """Under the ask lock: fail (and queue again) the RUNNING trials of processes on this host
    that are gone (``own``: of this process), and with ``untagged`` those no worker tagged."""
    recovered = []
    me = worker_identity()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = t.user_attrs.get("worker")
        if ident is None and (own or not untagged):
            continue
        if ident is not None and (ident != me if own else is_alive(ident)):
            continue
        why = "interrupted" if own else "worker process died"
        if ident is None or not fully_drawn(t):
            why = "worker process died while asking"
        fail_lost_trial(study, t, why)  # queued again if it was drawn in full
        recovered.append(t.number)
    return recovered


@dataclass
class Counts:
    complete: int
    running: int
    rejected: int
    failed: int
    stopped: int = 0  # stopped early by the multi-fidelity scheduler (counted as evaluations)


def is_stopped(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED and "stopped" in t.user_attrs


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    n = {s: 0 for s in TrialState}
    stopped = 0
    for t in trials:
        n[t.state] += 1
        stopped += is_stopped(t)
    return Counts(
        n[TrialState.COMPLETE],
        n[TrialState.RUNNING],
        n[TrialState.PRUNED] - stopped,
        n[TrialState.FAIL],
        stopped,
    )


class MetricError(NasError):
    """A trial's metrics are unusable (missing, not a number, NaN): the trial fails."""


def check_metrics(
    metrics: Mapping[str, Any], objectives: Sequence[str], constraints: Mapping[str, Bound]
) -> dict[str, float]:
    """The metrics as floats; MetricError naming the first problem (and the fix)."""
    missing = [n for n in objectives if n not in metrics]
    if missing:
        raise MetricError(
            f"evaluate returned no value for objective(s) {missing} (it returned "
            f"{sorted(metrics)}); return every objective named in directions"
        )
    missing = [n for n in constraints if n not in metrics]
    if missing:
        raise MetricError(
            f"constraint(s) on {missing} name no metric the trial produced ({sorted(metrics)}); "
            f"fix the constraint's name or return the metric"
        )
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise MetricError(
                f"metric {name!r} is {value!r} ({type(value).__name__}), not a number; "
                f"return int or float values"
            )
        v = float(value)
        if not math.isfinite(v) and (name in objectives or name in constraints):
            raise MetricError(
                f"metric {name!r} is {v}; return a finite number (raise an exception to fail "
                f"a candidate on purpose)"
            )
        out[name] = v
    return out


def _signature(msg: str) -> str:
    """An error message with its numbers masked: the same mistake on other trials matches."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", msg)


@dataclass
class _Failures:
    """Consecutive failed trials; ``stop()`` says whether they show a consistent mistake."""

    messages: list[str] = field(default_factory=list)

    def add(self, msg: str) -> None:
        self.messages.append(msg)

    def clear(self) -> None:
        self.messages.clear()

    def consistent(self) -> bool:
        last = self.messages[-MAX_CONSECUTIVE_ERRORS:]
        if len(self.messages) >= MAX_CONSECUTIVE_FAILURES:
            return True
        return len(last) == MAX_CONSECUTIVE_ERRORS and len({_signature(m) for m in last}) == 1


def _ask(
    study: optuna.Study, problem: Problem, proposer: Proposer | None
) -> tuple[optuna.Trial, Any, BaseException | None] | None:
    """Under the lock: ask a trial and sample its candidate (chosen by ``proposer`` if any).

    Returns None when the proposer finds the space exhausted (every candidate drawn was tried).
    """
    chosen = history = None
    queued = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # e.g. a retry
    if proposer is not None and not queued:
        history = read_history(study)  # read under the lock: no trial is asked meanwhile
        try:
            chosen = proposer.propose(history, problem.sample, problem.static)
        except Exception as err:  # e.g. the space failed on a proposal trial
            log.warning("auto: proposal round failed (%s: %s); this trial uses the fallback",
                        type(err).__name__, err)  # fmt: skip
        else:
            st = proposer.stats
            if chosen is None and st.drawn and st.duplicate == st.drawn:
                return None
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize":
        warnings.simplefilter("ignore", UserWarning)  # run_loop runs the heartbeat itself
        trial = study.ask()
    if heartbeats_on(study):  # its first heartbeat under the lock: see adopt_silent
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    trial.set_user_attr("worker", worker_identity())
    sampler = study.sampler
    if proposer is not None and not queued:
        trial.set_user_attr("proposal", proposer.stats.as_dict())
    if isinstance(sampler, ProposedSampler):  # a proposal, else the fallback the proposer named
        sampler.chosen = chosen.params if chosen is not None else {}
        if proposer is not None and proposer.stats.mode in sampler.fallbacks:
            sampler.mode = proposer.stats.mode
    try:
        candidate = problem.sample(trial)
    except BaseException as err:  # handled by the caller, outside the lock
        return trial, None, err
    finally:
        if isinstance(sampler, ProposedSampler):
            sampler.chosen = {}
    if history is not None and chosen is None and params_key(trial.params) in history.seen:
        return trial, None, Rejected("duplicate of a candidate already tried", {})
    if history is None:  # an Optuna sampler's repeat, or a retry whose params were incomplete
        same = _tried(study, trial.number).get(params_key(trial.params))
        if same is not None:
            # a repeat of a candidate a constraint rejected breaks it again: say so
            broke = same.user_attrs.get("metrics") if same.state == TrialState.PRUNED else None
            return trial, None, Rejected("duplicate of a candidate already tried", broke or {})
    return trial, candidate, None


_TRIED = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)


def _tried(study: optuna.Study, but: int) -> dict[str, optuna.trial.FrozenTrial]:
    """Every trial trained, training or rejected, except trial ``but``, by its params."""
    trials = study.get_trials(deepcopy=False, states=_TRIED)
    return {params_key(t.params): t for t in trials if t.number != but and t.params}


def run_loop(
    study: optuna.Study,
    problem: Problem,
    *,
    n_trials: int,
    lock: Path,
    deadline: float | None = None,
    on_tell: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    max_rejected: int | None = None,
    proposer: Proposer | None = None,
    scheduler: MOASHA | None = None,
    warn_exhausted: bool = True,
    max_streak: int | None = None,
) -> None:
    """Run trials until ``n_trials`` evaluations are done in the study (all workers together).

    ``max_streak`` candidates rejected in a row (a hard constraint on a static metric, or a
    duplicate) stop this worker with a :class:`NasError` that names the constraint and the
    closest value seen: no candidate the sampler finds meets it.

    An evaluation is a COMPLETE trial or one the multi-fidelity ``scheduler`` stopped early.
    ``warn_exhausted=False`` leaves saying that the space looks exhausted to a caller that
    explains the end of the search itself (the local driver's ``shortfall``).
    """
    max_rejected = max_rejected if max_rejected is not None else 20 * n_trials
    failures = _Failures()
    streak = RejectionStreak(max_streak or 20 * n_trials, problem.constraints)
    told_waiting = False
    while deadline is None or time.time() < deadline:
        with ask_lock(study, lock):
            dead = fail_dead(study)  # a joined worker on this host killed: retried at once
            if dead:
                log.info("trial(s) %s: their worker process died; failed and queued again", dead)
            if heartbeats_on(study):
                silent = adopt_silent(study)  # asked by a worker that died before its 1st beat
                if silent:
                    log.info("trial(s) %s have no heartbeat: retried once stale", silent)
                fail_stale(study)  # trials of workers that went silent, on any host
            c = counts(study)
            done = c.complete + c.stopped
            if done >= n_trials or c.rejected >= max_rejected:
                return
            others = done + c.running >= n_trials  # the rest is running elsewhere
            if others and not heartbeats_on(study):
                return  # one host: the driver recovers a dead process's trial by its pid
            if not others:
                t0 = time.perf_counter()
                asked = _ask(study, problem, proposer)
                if asked is None:
                    if warn_exhausted:
                        log.warning(
                            "every candidate drawn was already tried: the space looks exhausted"
                        )
                    return
        if others:
            # stay until they finish, or until a silent one is failed and its retry is ours
            if not told_waiting:
                log.info(
                    "%d trial(s) running on other workers; waiting for them (one whose worker "
                    "died is retried once its heartbeat is stale)",
                    c.running,
                )
                told_waiting = True
            time.sleep(poll_seconds(study))
            continue
        trial, candidate, sample_error = asked
        beat = heartbeat_thread(trial._trial_id, study._storage)
        beat.start()
        try:
            frozen = _run_trial(study, problem, trial, candidate, sample_error, t0, scheduler)
        finally:
            beat.join()
        if frozen.state == TrialState.FAIL:
            failures.add(frozen.user_attrs["error"])
            if failures.consistent():
                raise TrialError(
                    f"{len(failures.messages)} trials in a row failed, last (trial "
                    f"{frozen.number}) with: {frozen.user_attrs['error']}"
                )
        else:
            failures.clear()
        if on_tell is not None:
            on_tell(frozen)
        streak.add(frozen)


@dataclass
class RejectionStreak:
    """Candidates rejected in a row, and per constraint how often and how closely it broke."""

    limit: int
    constraints: Mapping[str, Bound]
    n: int = 0
    broken: dict[str, int] = field(default_factory=dict)
    closest: dict[str, tuple[float, float]] = field(default_factory=dict)  # (excess, value)

    def add(self, t: optuna.trial.FrozenTrial) -> None:
        if t.state != TrialState.PRUNED or "rejected" not in t.user_attrs:
            self.n = 0
            self.broken.clear()
            self.closest.clear()
            return
        self.n += 1
        metrics = t.user_attrs.get("metrics") or {}
        for name, excess in violations(self.constraints, metrics).items():
            if excess > 0:
                self.broken[name] = self.broken.get(name, 0) + 1
                if name not in self.closest or excess < self.closest[name][0]:
                    self.closest[name] = (excess, float(metrics[name]))
        if self.n >= self.limit:
            raise NasError(self.message())

    def message(self) -> str:
        if not self.broken:
            return (
                f"{self.n} candidates in a row were duplicates of trials already run: the "
                f"space looks exhausted; widen it or ask for fewer trials"
            )
        name = max(self.broken, key=lambda k: self.broken[k])
        rule = describe_bound(self.constraints[name])
        return (
            f"{self.n} candidates in a row broke a hard constraint, {self.broken[name]} of them "
            f"{name} {rule} (the closest had {name}={self.closest[name][1]:g}); loosen "
            f"constraints.{name} or change the space (search.max_rejections={self.limit} "
            f"sets how many in a row stop the search)"
        )


def _run_trial(
    study: optuna.Study,
    problem: Problem,
    trial: optuna.Trial,
    candidate: Any,
    sample_error: BaseException | None,
    t0: float,
    scheduler: MOASHA | None,
) -> optuna.trial.FrozenTrial:
    """Static metrics -> (reject | evaluate) -> tell; every outcome is recorded on the trial."""
    names = list(problem.directions)
    trial.set_user_attr(SAMPLED, time.perf_counter() - t0)
    report = Reporter(study, trial, problem.directions, scheduler)
    try:
        if sample_error is not None:
            raise sample_error
        metrics = dict(problem.static(candidate))
        trial.set_user_attr("static", dict(metrics))  # a copy: metrics grows below
        reason = describe_violation(problem.constraints, metrics)
        if reason is not None:
            raise Rejected(reason, metrics)
        metrics.update(problem.evaluate(candidate, trial, report))
        metrics = check_metrics(metrics, names, problem.constraints)
    except Rejected as rej:
        for name, value in violations(problem.constraints, rej.metrics).items():
            trial.set_constraint(name, value)
        trial.set_user_attr("metrics", rej.metrics)
        trial.set_user_attr("rejected", rej.reason)
        trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
        frozen = study.tell(trial, state=TrialState.PRUNED)
    except Stopped as stop:
        last = report.curve[-1][1] if report.curve else {}
        trial.set_user_attr("metrics", {**(trial.user_attrs.get("static") or {}), **last})
        trial.set_user_attr("stopped", {"budget": stop.budget, "reason": stop.reason})
        trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
        frozen = study.tell(trial, state=TrialState.PRUNED)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        msg = str(err) if isinstance(err, NasError) else f"{type(err).__name__}: {err}"
        trial.set_user_attr("error", msg)
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        frozen = study.tell(trial, state=TrialState.FAIL)
    else:
        trial.set_user_attr("metrics", metrics)
        for name, value in violations(problem.constraints, metrics).items():
            trial.set_constraint(name, value)  # <= 0 is feasible; samplers read these
        trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
        frozen = study.tell(trial, [metrics[n] for n in names])
    return frozen
