"""``nas doctor RUN_DIR``: check a run folder and repair what can be repaired, saying what it did.

Checked: the frozen experiment; the study file (a torn tail or a record written onto one is
rewritten from the intact records, the original kept as a backup); trials left RUNNING by a dead
process on this host (failed, their params queued to train again); every completed trial's
weights (present and loadable into its architecture); every export (its files present, the ONNX
model loads and still scores its recorded test accuracy); leftover temporary files of killed
writers (removed).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from nas.errors import NasError, NasWarning

if TYPE_CHECKING:
    import optuna

    from nas.runs import Run


@dataclass
class Finding:
    """One line of the check: ``ok`` (fine or repaired), ``repaired`` or a problem left."""

    status: str  # "ok" | "repaired" | "problem"
    text: str


def doctor(
    run_dir: Path,
    *,
    repair: bool = True,
    verify_exports: bool = True,
    say: Callable[[Finding], None] | None = None,
) -> list[Finding]:
    """Check ``run_dir``; with ``repair`` fix what can be fixed. Returns the findings in order."""
    from nas.runs import Run

    out: list[Finding] = []

    def note(status: str, text: str) -> None:
        f = Finding(status, text)
        out.append(f)
        if say is not None:
            say(f)

    run = Run.open(run_dir)  # no experiment.yaml: not a run folder (NasError)
    note("ok", f"experiment: {run.exp.name or run.dir.name} ({run.exp.space.name} space)")
    _study_file(run, repair, note)
    with warnings.catch_warnings():  # a damage is reported above, once
        warnings.simplefilter("ignore", NasWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, on import
        study = run.study()
    _running(run, study, repair, note)
    _weights(run, study, note)
    _leftovers(run, repair, note)
    if verify_exports:
        _exports(run, note)
    return out


def _study_file(run: Run, repair: bool, note: Callable[[str, str], None]) -> None:
    from nas.search._journal import repair as repair_journal
    from nas.search._journal import settled_scan, writing
    from nas.search._storage import journal_path

    url = run.exp.search.storage
    if url is not None and not url.startswith("journal:"):
        note("ok", f"study: in a database ({url.split('://')[0]}), not a file to check")
        return
    path = journal_path(url, run.dir)
    if not path.is_file():
        raise NasError(f"{run.dir} has no study yet ({path} does not exist); run `nas run` first")
    if writing(path):
        note("ok", f"study: {path.name} is being written by a running search; checked as is")
    s = settled_scan(path)
    if s.intact:
        note("ok", f"study: {path.name} intact ({len(s.records)} records)")
    elif repair and not writing(path):
        note("repaired", f"study: {repair_journal(path) or s.describe()}")
    else:
        note("problem", f"study: {s.describe()}; `nas doctor {run.dir}` without --check repairs it")


def _running(run: Run, study: optuna.Study, repair: bool, note: Callable[[str, str], None]) -> None:
    from nas.search._process import is_alive
    from nas.search._worker import LOCK_FILE, counts, recover_stale

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = [t.number for t in running if not is_alive(t.user_attrs.get("worker") or {})]
    c = counts(study)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    note(
        "ok",
        f"trials: {c.complete} complete, {c.stopped} stopped early, {c.running} running, "
        f"{waiting} queued, {c.failed} failed, {c.rejected} rejected",
    )
    if not dead:
        return
    if not repair:
        note("problem", f"trials {dead} were left running by a dead process on this host")
        return
    retried = recover_stale(run.study(writable=True), run.dir / LOCK_FILE)
    note(
        "repaired",
        f"trials {retried} were left running by a dead process: failed, their params queued; "
        f"re-run `nas run` to train them",
    )


def _weights(run: Run, study: optuna.Study, note: Callable[[str, str], None]) -> None:
    from nas.front import Front
    from nas.run_folder import trial_model

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = {p.number: p for p in Front.from_study(study, run.directions).candidates}
    bad = []
    for t in done:
        p = points.get(t.number)
        if p is None:  # infeasible trials keep weights too, but nothing exports them
            continue
        try:
            trial_model(run, p)
        except Exception as err:  # missing, truncated, or not this architecture
            bad.append(f"trial {t.number} ({str(err).split(';')[0]})")
    if bad:
        note(
            "problem",
            f"weights: {len(bad)} of {len(points)} feasible trial(s) cannot be loaded, e.g. "
            f"{bad[0]}; export refuses them: pick others or re-run the search in a new folder",
        )
    else:
        note("ok", f"weights: all {len(points)} feasible trial(s) load")


def _leftovers(run: Run, repair: bool, note: Callable[[str, str], None]) -> None:
    temps = [p for p in run.dir.rglob(".*") if p.is_file() and p.name.endswith((".tmp", ".repair"))]
    # an export killed midway leaves its hidden build folder (a finished one is renamed)
    temps += [p for p in run.dir.glob("exports/.trial-*") if p.is_dir()]
    if not temps:
        return
    if repair:
        for p in temps:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        note("repaired", f"removed {len(temps)} temporary file(s) of killed writers")
    else:
        note("problem", f"{len(temps)} temporary file(s) of killed writers, e.g. {temps[0]}")


def _exports(run: Run, note: Callable[[str, str], None]) -> None:
    import nas.onnx_utils as onnx_utils

    folders = sorted(p for p in (run.dir / "exports").glob("trial-*") if p.is_dir())
    if not folders:
        return
    bad = []
    tol = run.exp.export.tolerance
    for folder in folders:
        try:
            config = json.loads((folder / "config.json").read_text())
            metrics = json.loads((folder / "metrics.json").read_text())
            model = folder / config["onnx"]["deployed"]
            sess = onnx_utils.session(model, threads=1)
            acc = onnx_utils.accuracy(sess, run.splits.test)
        except Exception as err:
            bad.append(f"{folder.name} ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
            continue
        recorded = metrics["exported"]["test_accuracy"]
        if abs(acc - recorded) > tol:
            bad.append(f"{folder.name} (scores {acc:.4f}, recorded {recorded:.4f})")
    if bad:
        note(
            "problem",
            f"exports: {len(bad)} of {len(folders)} do not verify, e.g. {bad[0]}; "
            f"re-export them with `nas export {run.dir} --select ...`",
        )
    else:
        note("ok", f"exports: all {len(folders)} load and score their recorded test accuracy")
