"""The run folder's study file: Optuna's journal format, one JSON operation per line.

Optuna reads a line that does not end in a newline as a write still in progress and skips it; the
next write then lands on the same line, and from then on every read fails. A file cut mid-line (a
full disk, a killed copy) is therefore found here before anything reads or writes it:
:func:`scan` keeps every intact record (and the record a later write appended onto a torn line),
:func:`repair` rewrites the file from them, keeping the original as a backup, and
:class:`ReadOnlyJournal` reads a study without ever writing to its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend

from nas.errors import NasError

LOCK_SUFFIX = ".lock"  # Optuna's JournalFileSymlinkLock: present while a process writes
_RECORD_START = b'{"op_code":'


@dataclass
class Scan:
    """What a journal file holds: its intact records and what is not one."""

    path: Path
    records: list[bytes] = field(default_factory=list)  # each ends with a newline
    dropped_bytes: int = 0  # bytes that are not part of an intact record
    recovered: int = 0  # records cut out of a line a write had appended onto a torn record
    torn_bytes: int = 0  # the file ends in the middle of a record this long
    lost_after: int = 0  # lines after an unreadable one (not replayable without it)
    first_bad_line: int | None = None

    @property
    def intact(self) -> bool:
        return not (self.dropped_bytes or self.recovered or self.lost_after)

    def describe(self) -> str:
        """One sentence: what is wrong with the file (empty when it is intact)."""
        if self.intact:
            return ""
        parts = []
        if self.torn_bytes:
            parts.append("it ends in a torn record (cut mid-write: a full disk or a killed copy)")
        if self.recovered:
            parts.append(f"{self.recovered} record(s) were written onto a torn one")
        if self.first_bad_line is not None:
            parts.append(
                f"line {self.first_bad_line} is unreadable and the {self.lost_after} line(s) "
                f"after it cannot be replayed without it"
            )
        return f"{self.path}: " + "; ".join(parts) + f"; {len(self.records)} intact record(s)"


def scan(path: Path) -> Scan:
    """Read ``path`` record by record (see :class:`Scan`)."""
    path = Path(path)
    out = Scan(path)
    lines = path.read_bytes().splitlines(keepends=True)
    for i, line in enumerate(lines, start=1):
        if not line.endswith(b"\n"):  # only the last line can lack its newline
            out.torn_bytes = len(line)
            out.dropped_bytes += len(line)
            break
        if _record(line):
            out.records.append(line)
            continue
        start = line.rfind(_RECORD_START)
        if i > 1 and start > 0 and _record(line[start:]):
            out.records.append(line[start:])  # a write appended onto a torn record
            out.recovered += 1
            out.dropped_bytes += start
            continue
        out.first_bad_line = i
        out.lost_after = len(lines) - i
        out.dropped_bytes += sum(len(x) for x in lines[i - 1 :])
        break
    return out


def _record(line: bytes) -> bool:
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and "op_code" in value


STALE_LOCK_SECONDS = 30  # Optuna's JournalFileSymlinkLock breaks a lock this old (grace_period)


def writing(path: Path) -> bool:
    """Whether a process holds the journal's write lock now (a lock older than Optuna's grace
    period was left by a process killed mid-write)."""
    age = _lock_age(path)
    return age is not None and age <= STALE_LOCK_SECONDS


def _lock_age(path: Path) -> float | None:
    try:
        return time.time() - os.lstat(str(path) + LOCK_SUFFIX).st_mtime
    except FileNotFoundError:
        return None


def wait_for_lock(path: Path, timeout: float = STALE_LOCK_SECONDS + 5) -> bool:
    """Wait until no process holds the write lock; a lock left by a process killed mid-write
    (older than Optuna's grace period, which would break it too) is removed. Returns whether
    the file is free."""
    t0 = time.monotonic()
    while True:
        age = _lock_age(path)
        if age is None:
            return True
        if age > STALE_LOCK_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(path) + LOCK_SUFFIX)
            return True
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.5)


def settled_scan(path: Path, wait: float = 0.3) -> Scan:
    """A scan that tells a torn tail from a write in progress: a partial last line is torn only
    when no process holds the write lock and the file does not grow meanwhile."""
    s = scan(path)
    if s.torn_bytes and (writing(path) or _grows(path, wait)):
        s = scan(path)  # the write has finished meanwhile, or is still going on
        if s.torn_bytes and writing(path):  # in progress: the partial line is no damage
            s.dropped_bytes -= s.torn_bytes
            s.torn_bytes = 0
    return s


def _grows(path: Path, wait: float) -> bool:
    size = path.stat().st_size
    time.sleep(wait)
    return path.stat().st_size != size


def check_journal(path: Path) -> None:
    """A file that is not Optuna's journal is refused before anything appends to it: its first
    line (read alone) is a whole line that holds no journal record."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        first = f.readline()
    if first.endswith(b"\n") and not _record(first):
        raise NasError(
            f"{path} is not a study journal (its first line is no Optuna journal record); "
            f"pass a new file with --storage journal:PATH, or the run folder's study.journal"
        )


def repair(path: Path) -> str | None:
    """Rewrite a damaged journal from its intact records; the original is kept beside it as
    ``study.journal.torn-<UTC time>``. Returns what was done (``None``: nothing to do)."""
    path = Path(path)
    if not path.is_file() or not wait_for_lock(path):
        return None  # a process still writes to it: it is not torn
    check_journal(path)
    s = settled_scan(path)
    if s.intact:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.torn-{stamp}")
    shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.repair")
    tmp.write_bytes(b"".join(s.records))
    os.replace(tmp, path)
    return f"repaired {s.describe()} kept; the original is saved as {backup.name}"


class ReadOnlyJournal(BaseJournalBackend):
    """Optuna's journal file, read only: no file is created, locked or appended to.

    Reads only intact records (:func:`scan`); ``damage`` says what else the file holds.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._key: tuple[int, int] | None = None
        self._logs: list[dict[str, Any]] = []
        self.damage = ""

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        st = self.path.stat()
        key = (st.st_size, st.st_mtime_ns)
        if key != self._key:
            s = settled_scan(self.path) if self._key is None else scan(self.path)
            self._logs = [json.loads(r) for r in s.records]
            self.damage = s.describe()
            self._key = key
        return self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise NasError(
            f"{self.path} was opened read-only and this command tried to change the study; "
            f"report this as a bug"
        )
