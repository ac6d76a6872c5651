"""The Ray Tune backend: the same trials as the local driver, scheduled by Ray Tune on a cluster.

``Tuner`` + ``OptunaSearch`` (multi-objective) choose the params; each Tune trial runs the same
``_run_trial`` as a local worker (static metrics, constraints, training, measuring) and records
itself in the run folder's study (a journal file on shared storage, or a database), so ``nas front``
and ``nas export`` work unchanged. Weights go to the run folder, which every node must reach.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.errors import NasError
from nas.search._problem import SAMPLED, Problem, Rejected
from nas.search._process import worker_identity
from nas.search._proposal import params_key
from nas.search._storage import fail_lost_trial
from nas.search._tune_search import (
    HISTORY,
    QUIET,
    Gate,
    Search,
    history,
    open_once,
    queued,
    streak_message,
)
from nas.search._worker import LOCK_FILE, _run_trial, _tried, ask_lock, counts

ROUNDS = 3  # Tune runs at most: a restored one, then new ones while each adds evaluations
REUSE_ACTORS = True  # ~0.2 s per trial instead of ~1.4 s (benchmarks/ray_overhead.py sets False)
DONE = ".nas-done"  # marks a Tune run that finished (not to be restored)
_PROBLEMS: dict[str, Problem] = {}  # per worker process: Ray reuses actors between trials


def _problem(factory: Callable[[], Problem], key: str) -> Problem:
    if key not in _PROBLEMS:
        _PROBLEMS[key] = factory()
    return _PROBLEMS[key]


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


def _finished(study: optuna.Study, tune_id: str) -> FrozenTrial | None:
    """The trial a Tune trial already ran to an end, if any: a restored Tune run re-runs what it
    missed. A trial failed because its worker was lost (it has a retry) does not count."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        lost = t.state == TrialState.FAIL and t.number in retried
        if t.user_attrs.get("tune_trial") == tune_id and t.state.is_finished() and not lost:
            return t
    return None


def trainable(
    config: dict[str, Any],
    *,
    factory: Callable[[], Problem],
    open_study: Callable[[], optuna.Study],
    key: str,
    n_trials: int,
) -> None:
    """One Tune trial: record it in the run's study, run it as a local worker would, report.

    Under the ask lock, as a local worker: a Tune trial retried after its worker died fails the
    trial it left RUNNING and trains the same params again; a config equal to a queued retry
    takes that trial; a config already trained, training or rejected is recorded as a rejected
    duplicate (the searcher is told the earlier values) and not trained again.
    """
    import ray
    from ray import tune

    problem = _problem(factory, key)
    study = open_once(open_study, key)
    names = list(problem.directions)
    tune_id = tune.get_context().get_trial_id()
    earlier = _finished(study, tune_id)
    if earlier is not None:
        _report(names, earlier)
        return
    t0 = time.perf_counter()
    fixed = optuna.trial.FixedTrial(config)
    candidate: Any = None
    error: BaseException | None = None
    try:
        candidate = problem.sample(fixed)
    except Exception as err:  # Rejected or not: recorded on the trial like a local worker does
        error = err
    params = {k: v for k, v in config.items() if k in fixed.distributions}
    attrs: dict[str, Any] = {
        SAMPLED: time.perf_counter() - t0,  # drawn in full: a lost trial is retried
        "worker": worker_identity(),
        "ray_node": ray.util.get_node_ip_address(),
        "tune_trial": tune_id,
    }
    with ask_lock(study, Path(key) / LOCK_FILE):  # as the local driver: count, then create
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("tune_trial") == tune_id:  # this Tune trial's earlier attempt
                fail_lost_trial(study, t, "Ray worker lost", retry=False)  # retried right here
                attrs.update(retry_of=t.number, retry_reason="Ray worker lost")
        c = counts(study)
        if c.complete + c.stopped + c.running >= n_trials:
            _report(names, None)  # e.g. a restored run's extra samples
            return
        retry = queued(study).get(params_key(params))
        same = _tried(study, -1).get(params_key(params))
        dup: FrozenTrial | None = None
        if retry is not None and study._storage.set_trial_state_values(
            retry._trial_id, TrialState.RUNNING
        ):
            trial_id = retry._trial_id
            for name, dist in fixed.distributions.items():
                study._storage.set_trial_param(
                    trial_id, name, dist.to_internal_repr(params[name]), dist
                )
            for name, value in attrs.items():
                study._storage.set_trial_user_attr(trial_id, name, value)
        else:
            template = FrozenTrial(
                number=-1,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=datetime.now(),
                datetime_complete=None,
                params=params,
                distributions=fixed.distributions,
                user_attrs=attrs,
                system_attrs={},
                intermediate_values={},
                trial_id=-1,
            )
            trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
            if same is not None and error is None:  # as a local worker: not trained again
                dup = same
                broke = same.user_attrs.get("metrics") if same.state == TrialState.PRUNED else None
                candidate = None
                error = Rejected("duplicate of a candidate already tried", broke or {})
    trial = optuna.Trial(study, trial_id)
    frozen = _run_trial(
        study, problem, trial, candidate, error, t0, getattr(problem, "scheduler", None)
    )
    _report(names, dup or frozen)  # a duplicate tells the searcher what its twin scored


def optimize_ray(
    factory: Callable[[], Problem],
    problem: Problem,
    study: optuna.Study,
    open_study: Callable[[], optuna.Study],
    *,
    run_dir: Path,
    n_trials: int,
    workers: int,
    make_sampler: Callable[[int], optuna.samplers.BaseSampler],
    seed: int,
    address: str | None,
    resources: dict[str, float],
    max_streak: int = 2000,
) -> None:
    """Run Tune trials until the study holds ``n_trials`` evaluations (complete, or stopped early
    by MO-ASHA). Re-running resumes: the study keeps every finished trial, trials a dead driver
    left RUNNING are failed and queued again, and Tune runs only the missing ones; a Tune trial
    whose worker or node died is retried with the same params (``FailureConfig``).

    ``make_sampler(seed)`` builds the searcher's sampler; a new Tune run gets the seed plus the
    number of trials so far (a resumed run does not re-draw the first run's candidates) and the
    study's completed trials as its history.
    """
    import ray

    if not ray.is_initialized():
        check_address(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    check_resources(resources)
    since = datetime.now()
    _fail_leftovers(study, "Ray driver lost", retry=True)  # no Tune trial runs before we start one
    stuck = False
    for _ in range(ROUNDS):
        c = counts(study)
        done = c.complete + c.stopped  # evaluations, as the local driver counts them
        if done >= n_trials or stuck:  # done, or a new Tune run added nothing: say why above
            return
        sampler = make_sampler(seed + len(study.get_trials(deepcopy=False)))
        restored = _fit(factory, problem, open_study, run_dir, n_trials, workers, sampler, seed,
                        resources, max_streak, since)  # fmt: skip
        k = counts(study)
        stuck = not restored and k.complete + k.stopped == done
        _fail_leftovers(study, "Ray worker lost", retry=False)  # failed on every Tune retry
        why = streak_message(study, since, max_streak, problem.constraints)
        if why is not None:
            raise NasError(why)


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


def _fail_leftovers(study: optuna.Study, why: str, *, retry: bool) -> None:
    """Fail the trials a lost Ray worker left RUNNING (nothing runs between Tune runs)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "ray_node" in t.user_attrs:
            fail_lost_trial(study, t, why, retry=retry)


def _fit(
    factory: Callable[[], Problem],
    problem: Problem,
    open_study: Callable[[], optuna.Study],
    run_dir: Path,
    n_total: int,
    workers: int,
    sampler: optuna.samplers.BaseSampler,
    seed: int,
    resources: dict[str, float],
    max_streak: int = 2000,
    since: datetime | None = None,
) -> bool:
    """One Tune run: the interrupted one restored (returns True), else a new one."""
    from ray import tune

    run_dir = run_dir.resolve()  # Tune reads a relative folder as a URI with no scheme
    key = str(run_dir)
    _PROBLEMS.setdefault(key, problem)
    fn = tune.with_resources(
        functools.partial(
            trainable, factory=factory, open_study=open_study, key=key, n_trials=n_total
        ),
        {k: v for k, v in resources.items() if v},
    )
    previous = sorted((run_dir / "ray").glob("tune-*"))
    if previous and not (previous[-1] / DONE).exists() and tune.Tuner.can_restore(previous[-1]):
        # an interrupted Tune run: restore it (its searcher's state, unfinished trials, retries)
        logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(QUIET)
        tune.Tuner.restore(
            str(previous[-1]), trainable=fn, resume_unfinished=True, resume_errored=True
        ).fit()
        (previous[-1] / DONE).touch()
        return True
    study = open_once(open_study, key)
    directions = dict(problem.directions)
    searcher = Search(
        open_study=open_study,
        key=key,
        space=functools.partial(define, factory=factory, key=key),
        metric=list(directions),
        mode=[d[:3] for d in directions.values()],
        sampler=sampler,
        seed=seed,
        storage=history(study, list(directions.values())),  # what was trained before
        study_name=HISTORY,
    )
    done = counts(study)
    name = f"tune-{len(previous):03d}"
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=Gate(
                searcher,
                workers,
                open_study=open_study,
                key=key,
                n_trials=n_total,
                limit=max_streak,
                constraints=problem.constraints,
                since=since or datetime.now(),
            ),
            # the gate ends the run; this bounds rejected samples as the local driver does
            num_samples=n_total - done.complete - done.stopped + 20 * n_total,
            reuse_actors=REUSE_ACTORS,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(run_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    tuner.fit()
    (run_dir / "ray" / name / DONE).touch()
    return False
