"""Which process runs a trial, and whether it still lives: a trial records its worker's host,
process id, process start time and PID space, so a worker on the same host can tell a dead
process's trial (its heartbeat, on a database study, tells the rest)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_space() -> str | None:
    """This kernel boot and PID namespace: where a process id names the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def worker_identity() -> dict[str, object]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start": _proc_start(pid),
        "pids": _pid_space(),
    }


def is_alive(ident: dict[str, object]) -> bool:
    """Whether the process that took a trial still runs. One on another host, or in another
    container or machine that shares this host name (another kernel boot or PID namespace),
    counts as alive: its heartbeat, not its process id, tells whether it died."""
    if ident.get("host") != socket.gethostname():
        return True
    if ident.get("pids") is not None and ident.get("pids") != _pid_space():
        return True
    pid = int(ident.get("pid", -1))  # type: ignore[arg-type]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _proc_state(pid) in ("Z", "X"):  # a zombie (killed, not reaped: e.g. a container's init)
        return False
    return ident.get("start") is None or _proc_start(pid) == ident.get("start")


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
