"""The Ray backend's search side, in the Tune driver: which candidate a Tune trial gets, when.

:class:`Gate` starts a Tune trial only while the run's study needs an evaluation; :class:`Search`
is Ray's OptunaSearch made to search as the local driver does (queued retries first, no
repeats, trials with no values told as failed). Both read the run's study, opened once per
process (:func:`open_once`) and never pickled with them (Tune saves them to restore a run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from nas.errors import NasError
from nas.search._proposal import params_key
from nas.search._worker import RejectionStreak, _tried, counts

DRAWS = 64  # random draws that replace a sampler's repeat before the duplicate is let through
HISTORY = "history"  # the searcher's in-memory study, warm-started from the run's study
_STUDIES: dict[str, optuna.Study] = {}  # per process: a reused actor does not reopen the study


def open_once(open_study: Callable[[], optuna.Study], key: str) -> optuna.Study:
    if key not in _STUDIES:
        _STUDIES[key] = open_study()
    return _STUDIES[key]


def queued(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """The queued trials (lost trials' retries, WAITING) by the params key they will train."""
    return {
        params_key(t.system_attrs["fixed_params"]): t
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if t.system_attrs.get("fixed_params")
    }


class Gate(ConcurrencyLimiter):
    """Tune's concurrency limiter that suggests a candidate only while the study needs one.

    It reads the study in the driver: no suggestion while the evaluations done plus the Tune
    trials live (running, pending, or retried after a lost worker) cover ``n_trials``; the search
    is FINISHED once they are done, or once ``limit`` candidates finished since ``since`` were
    rejected in a row (``why`` then says which constraint broke). No surplus Tune trial is started
    just to be refused, and a lost trial's retry is never starved of a worker by one.
    """

    def __init__(
        self,
        searcher: Searcher,
        max_concurrent: int,
        *,
        open_study: Callable[[], optuna.Study],
        key: str,
        n_trials: int,
        limit: int,
        constraints: Mapping[str, Any],
        since: datetime,
    ) -> None:
        super().__init__(searcher, max_concurrent)
        self.open_study = open_study
        self.key = key
        self.n_trials = n_trials
        self.limit = limit
        self.constraints = dict(constraints)
        self.since = since
        self.why: str | None = None
        self._seen: tuple[float, int] = (0.0, 0)  # (when, evaluations done) of the last read

    def _done(self, fresh: bool) -> int:
        now = time.monotonic()
        if fresh or now - self._seen[0] >= 0.5:  # Tune asks every step: read at most 2/s then
            study = open_once(self.open_study, self.key)  # cached per process, not pickled
            c = counts(study)
            self.why = streak_message(study, self.since, self.limit, self.constraints)
            self._seen = (now, c.complete + c.stopped)
        return self._seen[1]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for fresh in (False, True):  # a suggestion is made on a fresh count only
            done = self._done(fresh)
            if done >= self.n_trials or self.why is not None:
                return Searcher.FINISHED
            if done + len(self.live_trials) >= self.n_trials:
                return None  # the rest is running: ask again later
        return super().suggest(trial_id)


class Search(OptunaSearch):
    """Ray's OptunaSearch, made to search as the local driver does.

    - A lost trial's queued retry (WAITING in the run's study) is suggested before anything new,
      in a restored Tune run too.
    - A candidate already trained, training or rejected is not suggested again: the sampler's
      repeat (TPE re-draws the same point of a small space) is forgotten and replaced by a random
      draw, up to ``DRAWS`` times (then the trial records the duplicate and is not trained).
    - A trial with no values (rejected, failed, refused) is told FAIL; the stock searcher passes
      Optuna the NaN it reported, which Optuna refuses with a warning per trial.
    """

    def __init__(
        self, *, open_study: Callable[[], optuna.Study], key: str, seed: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)  # the sampler is seeded (a seed here too makes Ray warn)
        self.open_study = open_study
        self.key = key
        self._offered: set[int] = set()  # the WAITING retries handed to the sampler
        self._suggested: set[str] = set()  # params keys suggested by this searcher
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        study = open_once(self.open_study, self.key)
        retries = queued(study)
        for t in retries.values():
            if t.number not in self._offered:
                self._ot_study.enqueue_trial(dict(t.system_attrs["fixed_params"]))  # asked next
                self._offered.add(t.number)
        tried = (set(_tried(study, -1)) | self._suggested) - set(retries)
        config = super().suggest(trial_id)
        for _ in range(DRAWS):
            if not isinstance(config, dict) or params_key(config) not in tried:
                break
            self._ot_study.tell(self._ot_trials.pop(trial_id), state=TrialState.FAIL)
            own, self._ot_study.sampler = self._ot_study.sampler, self._random
            try:
                config = super().suggest(trial_id)
            finally:
                self._ot_study.sampler = own
        if isinstance(config, dict):
            self._suggested.add(params_key(config))
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        values = [(result or {}).get(m) for m in self.metric]
        if any(not isinstance(v, float) or math.isnan(v) for v in values):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


def streak_message(
    study: optuna.Study, since: datetime, limit: int, constraints: Mapping[str, Any]
) -> str | None:
    """Why to stop, if the last ``limit`` trials finished since ``since`` were all rejected."""
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.datetime_complete and t.datetime_complete >= since
    ]
    streak = RejectionStreak(limit, constraints)
    try:
        for t in sorted(done, key=lambda t: t.datetime_complete or since):
            streak.add(t)
    except NasError as err:
        return str(err)
    return None


class _NoMissingMetrics(logging.Filter):
    """Drop Tune's "Failed to fetch metrics" on restore: a Tune trial reports once, at its end,
    so one killed mid-trial has no results, and the run's study holds what it did anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to fetch metrics" not in record.getMessage()


QUIET = _NoMissingMetrics()


def history(study: optuna.Study, directions: list[str]) -> optuna.storages.InMemoryStorage:
    """The searcher's history: the study's completed trials, in memory (a new Tune run learns
    from every trial trained before it instead of starting over)."""
    storage = optuna.storages.InMemoryStorage()
    history = optuna.create_study(storage=storage, study_name=HISTORY, directions=directions)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        history.add_trial(
            optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, values=t.values
            )
        )
    return storage
