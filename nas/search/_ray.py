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

from nas.search._problem import Problem, Rejected
from nas.search._worker import _run_trial, worker_identity

ROUNDS = 3
_PROBLEMS: dict[str, Problem] = {}  # per worker process: Ray reuses actors between trials


def _problem(factory: Callable[[], Problem], key: str) -> Problem:
    if key not in _PROBLEMS:
        _PROBLEMS[key] = factory()
    return _PROBLEMS[key]


def define(trial: optuna.Trial, *, factory: Callable[[], Problem], key: str) -> None:
    """OptunaSearch's define-by-run space: the space's suggest calls (the model is thrown away)."""
    _problem(factory, key).sample(trial)


def trainable(
    config: dict[str, Any],
    *,
    factory: Callable[[], Problem],
    open_study: Callable[[], optuna.Study],
    key: str,
) -> None:
    """One Tune trial: record it in the run's study, run it as a local worker would, report."""
    import ray
    from ray import tune

    problem = _problem(factory, key)
    study = open_study()
    names = list(problem.directions)
    t0 = time.perf_counter()
    fixed = optuna.trial.FixedTrial(config)
    candidate: Any = None
    error: BaseException | None = None
    try:
        candidate = problem.sample(fixed)
    except (Rejected, Exception) as err:  # recorded on the trial like a local worker does
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
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("worker", worker_identity())
    trial.set_user_attr("ray_node", ray.util.get_node_ip_address())
    frozen = _run_trial(
        study, problem, trial, candidate, error, t0, getattr(problem, "scheduler", None)
    )
    if frozen.state == TrialState.COMPLETE:
        tune.report({n: float(v) for n, v in zip(names, frozen.values, strict=True)})
    else:
        tune.report({n: math.nan for n in names})


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

    from nas.search._worker import counts

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    for _ in range(ROUNDS):  # rejected candidates count as Tune samples: top up
        c = counts(study)
        done = c.complete + c.stopped  # evaluations, as the local driver counts them
        if done >= n_trials:
            return
        _fit(factory, problem, open_study, run_dir, n_trials - done, workers, sampler, seed,
             resources)  # fmt: skip
        _fail_leftovers(study)


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
    workers: int,
    sampler: optuna.samplers.BaseSampler,
    seed: int,
    resources: dict[str, float],
) -> None:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    key = str(run_dir.resolve())
    _PROBLEMS.setdefault(key, problem)
    directions = dict(problem.directions)
    searcher = OptunaSearch(
        space=functools.partial(define, factory=factory, key=key),
        metric=list(directions),
        mode=[d[:3] for d in directions.values()],
        sampler=sampler,
        seed=seed,
    )
    fn = functools.partial(trainable, factory=factory, open_study=open_study, key=key)
    tuner = tune.Tuner(
        tune.with_resources(fn, {k: v for k, v in resources.items() if v}),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=workers),
            num_samples=n,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((run_dir / "ray").resolve()),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    tuner.fit()
