"""Study storage: the run folder's journal file by default, or an SQLAlchemy URL."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from nas.errors import NasError, NasWarning
from nas.search._journal import ReadOnlyJournal, check_journal, repair
from nas.search._problem import fully_drawn

STUDY_NAME = "nas"
JOURNAL_FILE = "study.journal"


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def check_url(url: str | None) -> None:
    """Validate a storage URL's form without connecting."""
    if url is not None and url.startswith("journal:") and not url.removeprefix("journal:"):
        raise NasError("storage 'journal:' names no file; write it as journal:path/study.journal")
    if url is None or url.startswith("journal:"):
        return
    try:
        from sqlalchemy.engine import make_url

        make_url(url)
    except Exception:
        raise NasError(
            f"storage {redact(url)!r} is not a valid URL; use sqlite:///path/study.db, "
            f"postgresql://user@host/db, journal:path/study.journal, or leave it unset for the "
            f"run folder's journal file"
        ) from None


def retry_lost_trial(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str = "worker lost (no heartbeat)"
) -> None:
    """A trial whose worker died was failed: queue its params again (the heartbeat callback).

    (The failed trial cannot take attributes any more: the retry records why it exists.)
    """
    if not fully_drawn(trial):  # nothing was trained and its params are partial: no retry
        return
    attrs = {"retry_of": trial.number, "retry_reason": why}
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)


def fail_lost_trial(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str, *, retry: bool = True
) -> None:
    """Fail a RUNNING trial whose process is gone, saying why, and (``retry``) queue it again."""
    study._storage.set_trial_user_attr(trial._trial_id, "error", why)
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    if retry:
        retry_lost_trial(study, trial, why)


def open_storage(
    url: str | None, run_dir: Path, *, heartbeat: int | None = None
) -> optuna.storages.BaseStorage:
    """``None`` -> ``RUN_DIR/study.journal`` (safe for concurrent worker processes).

    A database URL gets Optuna's heartbeat when ``heartbeat`` (seconds) is given: every running
    trial records one that often, and a trial silent for 3 x that long (its worker died, on any
    host) is failed by the next worker that asks for a trial and its params are queued again.
    """
    check_url(url)
    if url is None or url.startswith("journal:"):
        path = journal_path(url, run_dir)
        check_journal(path)  # never append to a file that is not a study journal
        path.parent.mkdir(parents=True, exist_ok=True)
        # absolute: Optuna's lock is a symlink to this path, and it can only tell a lock left
        # by a killed writer (and break it after its grace period) when the link resolves
        backend = optuna.storages.journal.JournalFileBackend(str(path.resolve()))
        return optuna.storages.JournalStorage(backend)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sqlalchemy").setLevel(logging.ERROR)
    try:
        if heartbeat is None:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=retry_lost_trial,
        )
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if url in reason:
            reason = reason.replace(url, redact(url))
        raise NasError(
            f"cannot open storage {redact(url)!r}: {reason}; check the URL, that the "
            f"database server runs and that its driver is installed"
        ) from None


def journal_path(url: str | None, run_dir: Path) -> Path:
    """The journal file of a run: ``RUN_DIR/study.journal`` or the ``journal:PATH`` given."""
    return run_dir / JOURNAL_FILE if url is None else Path(url.removeprefix("journal:"))


def repair_storage(url: str | None, run_dir: Path) -> None:
    """Before a search writes: a journal with a torn tail is rewritten from its intact records
    (backup kept), so that the next write does not land on the torn line."""
    if url is None or url.startswith("journal:"):
        done = repair(journal_path(url, run_dir))
        if done:
            warnings.warn(done, NasWarning, stacklevel=2)


def read_study(url: str | None, run_dir: Path, directions: list[str]) -> optuna.Study:
    """The run's study, opened read-only: nothing is created, locked or appended to, and a run
    folder on read-only media reads. A damaged journal is read as far as it is intact, with a
    warning that says so."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    missing = f"{run_dir} has no study yet"
    if url is None or url.startswith("journal:"):
        path = journal_path(url, run_dir)
        if not path.is_file():
            raise NasError(f"{missing} ({path} does not exist); run `nas run` first")
        check_journal(path)
        backend = ReadOnlyJournal(path)
        storage: optuna.storages.BaseStorage = optuna.storages.JournalStorage(backend)
        if backend.damage:
            warnings.warn(
                f"{backend.damage}: shown as far as it is intact, trials after the damage "
                f"are missing; `nas doctor {run_dir}` repairs the file",
                NasWarning,
                stacklevel=2,
            )
    else:
        if url.startswith("sqlite:///"):
            db = Path(url.removeprefix("sqlite:///").split("?")[0])
            if not db.is_file():
                raise NasError(f"{missing} ({db} does not exist); run `nas run` first")
        storage = open_storage(url, run_dir)
    try:
        study = optuna.load_study(
            study_name=STUDY_NAME, storage=storage, sampler=optuna.samplers.RandomSampler()
        )
    except KeyError:
        where = redact(url) if url else "its journal"
        raise NasError(f"{missing} (no study in {where}); run `nas run` first") from None
    _check_directions(study, directions)
    return study


def load_study(
    storage: optuna.storages.BaseStorage,
    directions: list[str],
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        directions=directions,
        sampler=sampler,
        load_if_exists=True,
    )
    _check_directions(study, directions)
    return study


def _check_directions(study: optuna.Study, directions: list[str]) -> None:
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise NasError(
            f"the stored study optimises {have}, the experiment asks for {directions}; "
            f"use a new run folder (--out) for different objectives"
        )


def fail_stale(study: optuna.Study) -> None:
    """Fail (and queue again, see ``retry_lost_trial``) trials whose heartbeat stopped."""
    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def heartbeats_on(study: optuna.Study) -> bool:
    """Whether the study's running trials record heartbeats (a database study)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def poll_seconds(study: optuna.Study) -> float:
    """How often a worker waiting on others looks again: the heartbeat interval, at most 5 s."""
    interval = study._storage.get_heartbeat_interval() or 1  # type: ignore[attr-defined]
    return float(min(interval, 5))


def heartbeat_thread(trial_id: int, storage: optuna.storages.BaseStorage) -> Any:
    """A thread recording the trial's heartbeat while it runs (a no-op without heartbeat)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id, storage)


def adopt_silent(study: optuna.Study) -> list[int]:
    """Under the ask lock, heartbeats on: record a heartbeat for each RUNNING trial that has none.

    Optuna finds a trial stale only by its last heartbeat, so a worker that died between asking
    a trial and its first heartbeat left it RUNNING for ever, and the other workers waited on it
    for ever. A worker records its trial's first heartbeat under the lock, so one seen here with
    none was asked by a worker that died: given a heartbeat now, it goes stale after the grace
    period and is failed (and retried, if it was drawn in full) like any other lost trial.
    Ray's trials record no heartbeat and are left alone. Returns the trial numbers adopted.
    """
    from optuna.storages._rdb import models

    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
        return []
    session = backend.scoped_session()
    try:
        rows = (
            session.query(models.TrialModel.trial_id, models.TrialModel.number)
            .outerjoin(models.TrialHeartbeatModel)
            .filter(models.TrialModel.study_id == study._study_id)
            .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
            .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
            .all()
        )
    finally:
        session.close()
    adopted = []
    for trial_id, number in rows:
        if "tune_trial" not in storage.get_trial_user_attrs(trial_id):
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            adopted.append(number)
    return adopted


@contextlib.contextmanager
def journal_write_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the journal file's write lock (no-op for a database): no process writes meanwhile."""
    from optuna.storages.journal._file import get_lock_file

    backend = getattr(study._storage, "_backend", None)
    lock = getattr(backend, "_lock", None)
    if lock is None:
        yield
        return
    with get_lock_file(lock):
        yield
