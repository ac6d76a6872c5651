"""Search progress: trials done / total, front size, ETA (a rich bar on a TTY, else lines)."""

from __future__ import annotations

import sys
import time
from typing import Any


class SearchProgress:
    def __init__(self, total: int, done: int = 0, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, done, enabled
        self.start_done, self.t0 = done, time.time()
        self._bar: Any = None
        self._task: Any = None
        self._tty = sys.stderr.isatty()
        self._last = ""

    def __enter__(self) -> SearchProgress:
        if self.enabled and self._tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]search"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "search", total=self.total, completed=self.done, info=""
            )
        return self

    def eta_seconds(self) -> float | None:
        new = self.done - self.start_done
        if new <= 0:
            return None
        return (time.time() - self.t0) / new * max(self.total - self.done, 0)

    def update(
        self,
        done: int,
        *,
        front: int,
        running: int = 0,
        failed: int = 0,
        rejected: int = 0,
        stopped: int = 0,
        last: str = "",
    ) -> None:
        changed = done != self.done
        self.done = done
        info = f"front {front} | running {running}"
        if stopped:
            info += f" | stopped early {stopped}"
        if rejected:
            info += f" | rejected {rejected}"
        if failed:
            info += f" | failed {failed}"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
        elif self.enabled and changed:
            eta = self.eta_seconds()
            line = (
                f"[search] {done}/{self.total} trials | {info}"
                + (f" | eta {eta:.0f}s" if eta is not None else "")
                + (f" | {last}" if last else "")
            )
            if line != self._last:
                print(line, file=sys.stderr, flush=True)
                self._last = line

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
