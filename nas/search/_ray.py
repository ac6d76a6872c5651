"""The Ray Tune backend: the same trials as the local driver, scheduled by Ray Tune on a cluster.

``Tuner`` + ``OptunaSearch`` (multi-objective) choose the params; each Tune trial runs the same
``_run_trial`` as a local worker (static metrics, constraints, training, measuring) and records
itself in the run folder's study (a journal file on shared storage, or a database), so ``nas front``
and ``nas export`` work unchanged. Weights go to the run folder, which every node must reach.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.errors import NasError
from nas.search._problem import Problem
from nas.search._worker import LOCK_FILE, _run_trial, ask_lock, counts, worker_identity

ROUNDS = 3
DONE = ".nas-done"  # marks a Tune run that finished (not to be restored)
_PROBLEMS: dict[str, Problem] = {}  # per worker process: Ray reuses actors between trials
_STUDIES: dict[str, optuna.Study] = {}  # likewise, so a reused actor does not reopen the study


def _problem(factory: Callable[[], Problem], key: str) -> Problem:
    if key not in _PROBLEMS:
        _PROBLEMS[key] = factory()
    return _PROBLEMS[key]


def _study(open_study: Callable[[], optuna.Study], key: str) -> optuna.Study:
    if key not in _STUDIES:
        _STUDIES[key] = open_study()
    return _STUDIES[key]


def _report(names: list[str], trial: FrozenTrial | None) -> None:
    """Tell Tune a trial's objective values; NaN for each if it did not complete (or never ran)."""
    from ray import tune

    if trial is not None and trial.state == TrialState.COMPLETE:
        tune.report({n: float(v) for n, v in zip(names, trial.values, strict=True)})
    else:
        tune.report({n: math.nan for n in names})


def define(trial: optuna.Trial, *, factory: Callable[[], Problem], key: str) -> None:
    """OptunaSearch's define-by-run space: the space's suggest calls (the model is thrown away)."""
    _problem(factory, key).sample(trial)


def trainable(
    config: dict[str, Any],
    *,
    factory: Callable[[], Problem],
    open_study: Callable[[], optuna.Study],
    key: str,
    n_trials: int,
) -> None:
    """One Tune trial: record it in the run's study, run it as a local worker would, report."""
    import ray
    from ray import tune

    problem = _problem(factory, key)
    study = _study(open_study, key)
    names = list(problem.directions)
    tune_id = tune.get_context().get_trial_id()
    for t in study.get_trials(deepcopy=False):  # a restored Tune run re-runs what it missed
        if t.user_attrs.get("tune_trial") == tune_id and t.state.is_finished():
            _report(names, t)
            return
    t0 = time.perf_counter()
    fixed = optuna.trial.FixedTrial(config)
    candidate: Any = None
    error: BaseException | None = None
    try:
        candidate = problem.sample(fixed)
    except Exception as err:  # Rejected or not: recorded on the trial like a local worker does
        error = err
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={k: v for k, v in config.items() if k in fixed.distributions},
        distributions=fixed.distributions,
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    with ask_lock(study, Path(key) / LOCK_FILE):  # as the local driver: count, then create
        c = counts(study)
        if c.complete + c.stopped + c.running >= n_trials:
            _report(names, None)  # e.g. a restored run's extra samples
            return
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("worker", worker_identity())
    trial.set_user_attr("ray_node", ray.util.get_node_ip_address())
    trial.set_user_attr("tune_trial", tune_id)
    frozen = _run_trial(
        study, problem, trial, candidate, error, t0, getattr(problem, "scheduler", None)
    )
    _report(names, frozen)


def optimize_ray(
    factory: Callable[[], Problem],
    problem: Problem,
    study: optuna.Study,
    open_study: Callable[[], optuna.Study],
    *,
    run_dir: Path,
    n_trials: int,
    workers: int,
    sampler: optuna.samplers.BaseSampler,
    seed: int,
    address: str | None,
    resources: dict[str, float],
) -> None:
    """Run Tune trials until the study holds ``n_trials`` evaluations (complete, or stopped early
    by MO-ASHA). Re-running resumes: the study keeps every finished trial and Tune runs only the
    missing ones; a Tune trial whose worker or node died is retried (``FailureConfig``)."""
    import ray

    if not ray.is_initialized():
        check_address(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    check_resources(resources)
    for _ in range(ROUNDS):  # rejected candidates count as Tune samples: top up
        c = counts(study)
        done = c.complete + c.stopped  # evaluations, as the local driver counts them
        if done >= n_trials:
            return
        _fit(factory, problem, open_study, run_dir, n_trials - done, n_trials, workers, sampler,
             seed, resources)  # fmt: skip
        _fail_leftovers(study)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A one-line NasError at once when a HOST:PORT Ray address does not answer."""
    import socket

    if address in (None, "auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as err:
        raise NasError(
            f"cannot reach the Ray cluster at {address!r} ({err}); start it (`ray start --head`) "
            f"or pass its address as HOST:PORT, 'auto', or no address for a local Ray"
        ) from None


def check_resources(resources: dict[str, float]) -> None:
    """A one-line NasError when no node of the cluster can hold one trial."""
    import ray

    names = {"cpu": "CPU", "gpu": "GPU"}
    for key, want in resources.items():
        if not want:
            continue
        have = max(
            (n["Resources"].get(names[key], 0.0) for n in ray.nodes() if n.get("Alive")),
            default=0.0,
        )
        if want > have:
            raise NasError(
                f"search.{key}s_per_trial={want:g} but the largest Ray node has {have:g} "
                f"{names[key]}(s); lower {key}s_per_trial or add a bigger node"
            )


def _fail_leftovers(study: optuna.Study) -> None:
    """After a Tune run nothing runs: trials a dead Ray worker left RUNNING are failed."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "ray_node" in t.user_attrs:
            study._storage.set_trial_user_attr(t._trial_id, "error", "Ray worker lost")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _fit(
    factory: Callable[[], Problem],
    problem: Problem,
    open_study: Callable[[], optuna.Study],
    run_dir: Path,
    n: int,
    n_total: int,
    workers: int,
    sampler: optuna.samplers.BaseSampler,
    seed: int,
    resources: dict[str, float],
) -> None:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    run_dir = run_dir.resolve()  # Tune reads a relative folder as a URI with no scheme
    key = str(run_dir)
    _PROBLEMS.setdefault(key, problem)
    directions = dict(problem.directions)
    searcher = OptunaSearch(
        space=functools.partial(define, factory=factory, key=key),
        metric=list(directions),
        mode=[d[:3] for d in directions.values()],
        sampler=sampler,
        seed=seed,
    )
    fn = tune.with_resources(
        functools.partial(
            trainable, factory=factory, open_study=open_study, key=key, n_trials=n_total
        ),
        {k: v for k, v in resources.items() if v},
    )
    previous = sorted((run_dir / "ray").glob("tune-*"))
    if previous and not (previous[-1] / DONE).exists() and tune.Tuner.can_restore(previous[-1]):
        # an interrupted Tune run: restore it (its searcher's state, unfinished trials, retries)
        tune.Tuner.restore(
            str(previous[-1].resolve()), trainable=fn, resume_unfinished=True, resume_errored=True
        ).fit()
        (previous[-1] / DONE).touch()
        return
    name = f"tune-{len(previous):03d}"
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=workers),
            num_samples=n,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / "ray").resolve()),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    tuner.fit()
    (run_dir / "ray" / name / DONE).touch()
