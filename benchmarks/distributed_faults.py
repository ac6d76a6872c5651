"""Recovery from faults on distributed runs: the fault-test module's scenarios, with their numbers.

    python benchmarks/distributed_faults.py

Runs ``tests/test_distributed_faults.py`` (a ``nas worker`` on a PostgreSQL study, the driver
of a Ray run, a Ray worker process, the Ray worker node: each killed at random moments over
several seeds) and writes, per scenario and seed, the trials by state after recovery, the lost
trials, and the seconds from the kill to the first retry's start and to the search's last
completed trial (negative: the search had ended before the kill came).
Writes benchmarks/results/distributed_faults.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _md import states, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    if ap.parse_args().render:
        render(json.loads((RESULTS / "distributed_faults.json").read_text()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "faults.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-m", "faults or not faults", "tests/test_distributed_faults.py"],
            cwd=ROOT, env={**os.environ, "NAS_FAULTS_LOG": str(log)}, text=True,
        )  # fmt: skip
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/distributed_faults.py",
        "tests_passed": done.returncode == 0,
        "scenarios": rows,
    }
    (RESULTS / "distributed_faults.json").write_text(json.dumps(out, indent=2) + "\n")
    render(out)
    sys.exit(done.returncode)


def render(out: dict[str, Any]) -> None:
    """Write distributed_faults.md from the record (``--render``: from the committed JSON)."""
    rows = out["scenarios"]
    md = [
        f"# Distributed faults, recovery ({out['date']}, {out['machine']})",
        "",
        f"`{out['command']}` (every test of `tests/test_distributed_faults.py`; "
        f"{'all passed' if out['tests_passed'] else 'SOME FAILED'}): 6 requested trials each.",
        "",
    ]
    md += table(
        ["fault", "seed", "trials by state after recovery", "lost trials",
         "kill -> retry starts s", "kill -> search done s"],
        [[r["scenario"], r["seed"], states(r["states"]), r["lost"] or "-",
          "-" if r["retry_started_s"] is None else r["retry_started_s"], r["search_done_s"]]
         for r in rows],
    )  # fmt: skip
    md += [
        "",
        "A `nas worker` lost on PostgreSQL is retried at a surviving worker's next ask: on the "
        "same host as soon as that worker sees the process gone, from another host (here: a PID "
        "namespace of its own) once the heartbeat is 3 s stale (`heartbeat_seconds: 1`). A "
        "survivor in the middle of a trial asks when that trial ends, hence the 10 s rows (3 "
        "processes training on 2 cores). A Ray driver's retries wait for the re-run to start "
        "(about 7 s); a lost Ray worker's trial is retried by Tune within about 2.5 s.",
    ]
    (RESULTS / "distributed_faults.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
