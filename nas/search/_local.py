"""The local driver: N worker processes on one study (journal file in the run folder by default).

Re-running resumes: completed trials are kept, trials left RUNNING by a dead process are failed and
their params retried, and the run stops when ``n_trials`` trials are COMPLETE. A worker killed
mid-run is replaced and its trial retried.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from nas.errors import NasError
from nas.search._problem import Problem
from nas.search._progress import SearchProgress
from nas.search._proposal import Proposer
from nas.search._samplers import make_proposer, make_sampler
from nas.search._storage import journal_write_lock, load_study, open_storage
from nas.search._worker import LOCK_FILE, counts, recover_stale, run_loop

MAX_RESTARTS = 3
PROPOSAL_SECONDS = 2.0  # at most per trial for auto's proposal round (under the ask lock)


@dataclass(frozen=True)
class SearchSettings:
    n_trials: int
    workers: int = 1
    sampler: str = "auto"
    seed: int = 0
    storage: str | None = None
    timeout: float | None = None
    threads_per_worker: int | None = None
    heartbeat_seconds: int = 10
    max_rejections: int = 2000  # rejected candidates in a row (per worker) before it stops
    backend: str = "local"  # or "ray": Ray Tune schedules the trials (nas/search/_ray.py)
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def threads(self) -> int:
        return self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.workers)


def pin_gpu(index: int) -> int | None:
    """Worker ``index`` trains on visible GPU ``index % count`` (round-robin; more workers than
    GPUs share them). ``train.device: auto`` / ``cuda`` then means that GPU. None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    gpu = index % torch.cuda.device_count()
    torch.cuda.set_device(gpu)
    return gpu


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)


def open_study(
    settings: SearchSettings,
    run_dir: Path,
    directions: list[str],
    *,
    worker_index: int = 0,
) -> tuple[optuna.Study, str]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, why = make_sampler(
        settings.sampler,
        n_objectives=len(directions),
        n_trials=settings.n_trials,
        workers=settings.workers,
        seed=settings.seed + 1000 * worker_index,
    )
    storage = open_storage(settings.storage, run_dir, heartbeat=settings.heartbeat_seconds)
    return load_study(storage, directions, sampler), why


def open_study_only(settings: SearchSettings, run_dir: Path, directions: list[str]) -> optuna.Study:
    return open_study(settings, run_dir, directions)[0]


def _child(
    factory: Callable[[], Problem],
    settings: SearchSettings,
    run_dir: Path,
    index: int,
    deadline: float | None,
    messages: mp.Queue,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and SIGTERM:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it stops its workers (SIGKILL), then exits
    try:
        set_threads(settings.threads())
        pin_gpu(index)
        problem = factory()
        study, _ = open_study(
            settings,
            run_dir,
            list(problem.directions.values()),
            worker_index=index,
        )
        run_loop(
            study,
            problem,
            n_trials=settings.n_trials,
            lock=run_dir / LOCK_FILE,
            deadline=deadline,
            proposer=_proposer(study, problem, settings, index),
            scheduler=getattr(problem, "scheduler", None),
            warn_exhausted=False,  # the parent's shortfall() says it once, with the counts
            max_streak=settings.max_rejections,
        )
    except NasError as err:
        messages.put((index, str(err)))
        sys.exit(2)
    except Exception as err:
        import traceback

        traceback.print_exc()
        messages.put((index, f"worker {index} crashed: {type(err).__name__}: {err}"))
        sys.exit(1)


def _proposer(
    study: optuna.Study, problem: Problem, settings: SearchSettings, index: int
) -> Proposer | None:
    return make_proposer(
        study.sampler,
        directions=problem.directions,
        constraints=problem.constraints,
        n_trials=settings.n_trials,
        seed=settings.seed + 1000 * index,
        time_budget=PROPOSAL_SECONDS,  # a model's static metrics take milliseconds each
    )


def _front_size(study: optuna.Study, directions: dict[str, str]) -> int:
    from nas.front import completed_points, nondominated

    return len(nondominated(completed_points(study)[0], directions))


def optimize(
    factory: Callable[[], Problem],
    settings: SearchSettings,
    run_dir: Path,
    *,
    progress: bool = True,
    problem: Problem | None = None,
    joining: bool = False,
) -> optuna.Study:
    """Run the search to ``settings.n_trials`` COMPLETE trials; return the study.

    ``factory`` must be picklable (worker processes are spawned and call it); ``problem`` may be
    passed to reuse an already-built problem in-process when ``workers == 1``. ``joining``: this
    process adds workers to a search another one started (said so, not "resuming").
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    problem = problem or factory()
    directions = dict(problem.directions)
    study, why = open_study(settings, run_dir, list(directions.values()))
    lock = run_dir / LOCK_FILE
    deadline = time.time() + settings.timeout if settings.timeout else None
    c = counts(study)
    with SearchProgress(settings.n_trials, c.complete + c.stopped, enabled=progress) as bar:
        bar.log(f"[search] {why}; {settings.workers} worker(s) x {settings.threads()} thread(s)")
        if c.complete or c.stopped or joining:
            bar.log(
                f"[search] {'joining' if joining else 'resuming'}: {c.complete} trial(s) "
                f"complete, {c.stopped} stopped early, {c.running} running, {c.failed} failed, "
                f"{c.rejected} rejected"
            )
        retried = recover_stale(study, lock)
        if retried:
            bar.log(
                f"[search] trial(s) {retried} were left running by a dead process: failed "
                f"and queued to retry"
            )

        def show(_: object = None) -> None:
            k = counts(study)
            bar.update(
                k.complete + k.stopped,
                front=_front_size(study, directions),
                running=k.running,
                failed=k.failed,
                rejected=k.rejected,
                stopped=k.stopped,
            )

        if settings.backend == "ray":
            from nas.search._ray import optimize_ray

            name = "tpe" if settings.sampler == "auto" else settings.sampler

            def ray_sampler(seed: int) -> optuna.samplers.BaseSampler:
                return make_sampler(
                    name,
                    n_objectives=len(directions),
                    n_trials=settings.n_trials,
                    workers=settings.workers,
                    seed=seed,
                )[0]

            optimize_ray(
                factory,
                problem,
                study,
                functools.partial(
                    open_study_only, settings, run_dir.resolve(), list(directions.values())
                ),
                run_dir=run_dir,
                n_trials=settings.n_trials,
                workers=settings.workers,
                make_sampler=ray_sampler,
                seed=settings.seed,
                address=settings.address,
                max_streak=settings.max_rejections,
                resources={"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
            )
        elif settings.workers == 1:
            set_threads(settings.threads())
            try:
                run_loop(
                    study,
                    problem,
                    n_trials=settings.n_trials,
                    lock=lock,
                    deadline=deadline,
                    on_tell=show,
                    proposer=_proposer(study, problem, settings, 0),
                    scheduler=getattr(problem, "scheduler", None),
                    warn_exhausted=False,  # shortfall() below says it, with the counts
                    max_streak=settings.max_rejections,
                )
            except KeyboardInterrupt:
                recover_stale(study, lock, own=True)
                raise
        else:
            _run_workers(factory, settings, run_dir, deadline, study, bar, show)
        show()
        why = shortfall(study, settings.n_trials, deadline)
        if why:
            bar.log(f"[search] {why}")
    return study


def shortfall(study: optuna.Study, n_trials: int, deadline: float | None) -> str | None:
    """Why a search ended before ``n_trials`` evaluations (None if it did not)."""
    c = counts(study)
    done = c.complete + c.stopped
    if done >= n_trials:
        return None
    if done + c.running >= n_trials:
        return f"{c.running} trial(s) still running on other workers finish the search"
    if deadline is not None and time.time() >= deadline:
        return f"timeout after {done} of {n_trials} evaluations; re-run the command to go on"
    if c.rejected >= 20 * n_trials:
        return (
            f"stopped after {c.rejected} candidates broke a hard constraint on a static metric "
            f"({done} of {n_trials} evaluations); loosen the constraint or narrow the space"
        )
    return (
        f"stopped at {done} of {n_trials} evaluations: every candidate drawn was already tried "
        f"(the space looks exhausted; widen it or ask for fewer trials)"
    )


def _run_workers(
    factory: Callable[[], Problem],
    settings: SearchSettings,
    run_dir: Path,
    deadline: float | None,
    study: optuna.Study,
    bar: SearchProgress,
    show: Callable[[], None],
) -> None:
    ctx = mp.get_context("spawn")
    messages: mp.Queue = ctx.Queue()
    lock = run_dir / LOCK_FILE

    def start(i: int) -> mp.process.BaseProcess:
        p = ctx.Process(
            target=_child,
            args=(factory, settings, run_dir, i, deadline, messages),
            name=f"nas-worker-{i}",
            daemon=False,
        )
        p.start()
        return p

    procs = {i: start(i) for i in range(settings.workers)}
    restarts = 0
    error: str | None = None
    try:
        while procs:
            time.sleep(0.5)
            show()
            for i, p in list(procs.items()):
                if p.exitcode is None:
                    continue
                del procs[i]
                if p.exitcode == 0:
                    continue
                try:
                    _, msg = messages.get_nowait()
                except queue_mod.Empty:
                    msg = None
                if p.exitcode < 0:  # killed by a signal
                    sig = signal.Signals(-p.exitcode).name
                    retried = recover_stale(study, lock)
                    what = (
                        f"trial(s) {retried} failed and queued to retry"
                        if retried  # else another worker saw it dead first and retried it
                        else "its trial, if any, was already queued again by another worker"
                    )
                    bar.log(f"[search] worker {i} (pid {p.pid}) died with {sig}; {what}")
                    if restarts < MAX_RESTARTS * settings.workers:
                        restarts += 1
                        procs[i] = start(i)
                        bar.log(f"[search] restarted worker {i} (pid {procs[i].pid})")
                    continue
                error = msg or f"worker {i} exited with code {p.exitcode}"
                _stop(procs, study)
                break  # the snapshot being iterated is stale now
    except KeyboardInterrupt:
        _stop(procs, study)
        recover_stale(study, lock)
        raise
    if error is not None:
        recover_stale(study, lock)
        raise NasError(error)


def _stop(procs: dict[int, mp.process.BaseProcess], study: optuna.Study) -> None:
    """SIGKILL the workers (they ignore SIGTERM: it is the parent's to handle), holding the
    journal's write lock meanwhile: none is killed mid-write, leaving the lock behind (every
    later write would wait for it) or a torn record."""
    with journal_write_lock(study):
        for q in procs.values():
            q.kill()
        for q in procs.values():
            q.join()
    procs.clear()
