"""Private test clusters on loopback, started and stopped by PID: a 2-node Ray cluster (head
127.0.0.2, worker 127.0.0.3, auth disabled on every process) and a PostgreSQL server (Debian's
postgresql, trust auth). The Ray and PostgreSQL tests, the fault module and the Ray benchmark
share them. Never `ray stop` (it stops every Ray on the machine)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
RAY_ENV = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
_COMMON = ["--num-cpus=1", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pids_of(marker: str) -> set[int]:
    """Processes whose command line names ``marker``, and all their descendants."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents[int(d.name)] = ppid
        if marker in cmd:
            found.add(int(d.name))
    grew = True
    while grew:
        kids = {p for p, pp in parents.items() if pp in found} - found
        found |= kids
        grew = bool(kids)
    return found


def kill_all(marker: str) -> None:
    """SIGKILL every process naming ``marker`` (and their children) until none is left."""
    for _ in range(20):
        pids = pids_of(marker) - {os.getpid()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)


@dataclass
class RayCluster:
    address: str
    temp: str

    def start_worker_node(self) -> None:
        subprocess.run(
            [str(RAY), "start", f"--address={self.address}", f"--node-ip-address={WORKER}",
             *_COMMON],
            env=RAY_ENV, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        wait_for_nodes(self.address, 2)

    def kill_worker_node(self) -> None:
        """The worker host dies: its raylet, its Ray workers (and the trials they run)."""
        kill_all(f"--node-ip-address={WORKER}")

    def worker_node_alive(self) -> bool:
        return bool(pids_of(f"--node-ip-address={WORKER}"))


def wait_for_nodes(address: str, n: int, timeout: float = 60) -> None:
    """Until the cluster reports ``n`` live nodes (a restarted node takes a moment to register)."""
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(
            [sys.executable, "-c", code, address],
            env=RAY_ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {n} live nodes")


@contextlib.contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """A head and a worker node of 1 CPU each; everything killed by PID afterwards."""
    temp = tempfile.mkdtemp(prefix="nr", dir="/tmp")  # short: Ray's socket paths have a limit
    try:
        # a free port can be taken between the probe and Ray's bind (a fresh-clone CI run once
        # failed here and passed on rerun): a second attempt gets a new port
        errors = []
        for _ in range(2):
            port = free_port()
            cluster = RayCluster(f"{HEAD}:{port}", temp)
            try:
                subprocess.run(
                    [str(RAY), "start", "--head", f"--node-ip-address={HEAD}", f"--port={port}",
                     f"--temp-dir={temp}", "--include-dashboard=false", *_COMMON],
                    env=RAY_ENV, check=True, capture_output=True, timeout=180,
                )  # fmt: skip
                cluster.start_worker_node()
                break
            except subprocess.CalledProcessError as e:
                errors.append((e.stderr or b"").decode(errors="replace")[-2000:])
                kill_all(temp)
                kill_all(f"--node-ip-address={WORKER}")
        else:
            raise RuntimeError("ray start failed twice:\n" + "\n---\n".join(errors))
        yield cluster
    finally:
        kill_all(temp)
        kill_all(f"--node-ip-address={WORKER}")
        shutil.rmtree(temp, ignore_errors=True)


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL server on 127.0.0.1; yields a URL (trust auth, so any password)."""
    pg = pg_bin()
    assert pg is not None, "PostgreSQL is not installed"
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    log = root / "server.log"
    log.touch()
    if as_user:
        shutil.chown(log, "postgres")

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "nas", "--no-sync")
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "start")
    try:
        run("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "nas", "-d", "postgres",
            "-c", "CREATE DATABASE nas_test")  # fmt: skip
        yield f"postgresql://nas:s3cret-pw@127.0.0.1:{port}/nas_test"
    finally:
        with contextlib.suppress(Exception):
            run(str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
