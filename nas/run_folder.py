"""A run folder as the engine reads it: the frozen experiment, the data, the study (read-only
unless asked), the feasible front, the finalized models' records.

Below the top floor: export, finalize and supernet take a :class:`RunFolder`; ``nas.runs.Run``
(the top floor) adds the front's actions. Nothing outside the folder is needed to read a run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import optuna
import yaml
from torch import nn

from nas.config import Experiment, parse_experiment
from nas.data import Splits, load_data
from nas.errors import NasError
from nas.front import Front, completed_points, explain_no_match
from nas.search._problem import Point
from nas.search._storage import load_study, open_storage, read_study
from nas.search._worker import counts
from nas.space import rebuild, resolve_space
from nas.weights import load_trial, load_weights, weights_path
from objectives import directions

EXPERIMENT_FILE = "experiment.yaml"
FINAL_DIR = "final"
LATENCY_BATCHES = (1, 64)
LATENCY_KEY = f"latency_ms_batch{LATENCY_BATCHES[0]}"


def read_experiment(run_dir: Path) -> Experiment:
    path = Path(run_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise NasError(
            f"{run_dir} is not a run folder (no {EXPERIMENT_FILE}); pass the folder "
            f"that `nas run` created, e.g. runs/<name>"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NasError(
            f"{path} is damaged (invalid YAML: {first}); restore it from the experiment file "
            f"the run was started with (`nas run EXPERIMENT --out {run_dir}` checks it)"
        ) from None
    return parse_experiment(data, str(path))


@dataclass
class RunFolder:
    """A run folder as the modules below the top floor read it (export, finalize, supernet):
    the frozen experiment, the data, the study, the feasible front. ``nas.runs.Run`` adds the
    front's actions (finalize, export)."""

    dir: Path
    exp: Experiment
    _splits: Splits | None = None

    @classmethod
    def open(cls, run_dir: str | Path) -> Self:
        d = Path(run_dir)
        return cls(d, read_experiment(d))

    @property
    def directions(self) -> dict[str, str]:
        return directions(self.exp)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_data(self.exp.data)
        return self._splits

    def study(self, *, writable: bool = False) -> optuna.Study:
        """The run's study: read-only unless ``writable`` (then created when missing)."""
        directions = list(self.directions.values())
        if not writable:
            return read_study(self.exp.search.storage, self.dir, directions)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.exp.search.storage, self.dir)
        return load_study(storage, directions, optuna.samplers.RandomSampler())

    def feasible_front(self, where: str | None = None) -> Front:
        """The feasible front (``where`` filters it first); NasError when it is empty."""
        study = self.study()
        front = Front.from_study(study, self.directions, where)
        if not front.candidates:
            feasible, infeasible = completed_points(study)
            if where and feasible:
                known = sorted({k for p in feasible + infeasible for k in p.metrics})
                raise NasError(explain_no_match(where, feasible, known))
            c = counts(study)
            if not (c.complete):
                raise NasError(
                    f"{self.dir} has no completed trial ({c.running} running, "
                    f"{c.failed} failed, {c.rejected} rejected); run `nas run` first"
                )
            raise NasError(
                f"no feasible trial in {self.dir} ({c.complete} completed, each breaks a "
                f"constraint); loosen the experiment's constraints or run more trials"
            )
        return front


def final_root(run_dir: Path) -> Path:
    """Where finalized models live (``weights/`` below it mirrors the run folder's)."""
    return Path(run_dir) / FINAL_DIR


def record_file(root: Path, number: int) -> Path:
    return Path(root) / f"trial-{number:05d}.json"


def record_path(run_dir: Path, number: int) -> Path:
    """A finalized model's record (written last: its presence marks the model finalized)."""
    return record_file(final_root(run_dir), number)


def read_final(run_dir: Path, number: int) -> dict[str, Any] | None:
    """The record of trial ``number`` when ``nas finalize`` made one, else ``None``."""
    path = record_path(run_dir, number)
    return json.loads(path.read_text()) if path.is_file() else None


def read_finals(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Every finalized model of a run: trial number -> its record."""
    out = {}
    for path in sorted(final_root(run_dir).glob("trial-*.json")):
        rec = json.loads(path.read_text())
        out[int(rec["trial"])] = rec
    return out


def select_points(run: RunFolder, front: Front, select: str | Sequence[int] | None) -> list[Point]:
    """``front`` (default), ``knee``, or trial numbers (any completed trial)."""
    select = select if select is not None else run.exp.export.select
    if isinstance(select, str) and select not in ("front", "knee"):
        try:
            select = [int(s) for s in select.replace(",", " ").split()]
        except ValueError:
            raise NasError(
                f"--select {select!r}: use front, knee, or trial numbers like '3 7'"
            ) from None
    if not select:
        raise NasError("--select selects no model; pass front, knee, or trial numbers like '3 7'")
    if select == "front":
        return list(front.points)
    if select == "knee":
        return [front.knee()]
    # by number: any completed trial, also one that broke a constraint on a trained metric (e.g.
    # no better than chance): the user asked for it by name
    by_number = {p.number: p for p in [*front.infeasible, *front.candidates]}
    missing = [n for n in select if n not in by_number]
    if missing:
        raise NasError(
            f"--select: trial(s) {missing} are not completed trials of "
            f"{run.dir}; `nas front` lists the trials"
        )
    return [by_number[n] for n in select]


def trial_model(run: RunFolder, p: Point, root: Path | None = None) -> nn.Module:
    """The trained model of a completed trial, as saved in the run folder (``root``: another
    folder laid out the same way, e.g. ``RUN_DIR/final`` for a finalized model)."""
    root = run.dir if root is None else root
    # a compressed trial's module (its shapes changed)
    model = load_trial(root, p.number, run.exp.space.name)
    if model is not None:
        return model
    src = weights_path(root, p.number)
    if not src.is_file():
        raise NasError(
            f"weights of trial {p.number} are missing ({src}); re-run the search so "
            f"the trial is trained again"
        )
    splits = run.splits
    model = rebuild(
        resolve_space(run.exp.space.name),
        p.params,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        args=run.exp.space.args,
    )
    return load_weights(model, src)
