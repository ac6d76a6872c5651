"""ONE trial of an experiment: build -> cheap metrics -> train -> measure -> save weights.

This module is the only place that orders these steps. Objectives see the model as it will be
exported. Cheap metrics come first so that a hard constraint rejects a candidate before training.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from nas.config import Bound, Experiment
from nas.data import Split, Splits, load_data
from nas.errors import NasError
from nas.space import Space, build_model, resolve_space
from nas.train import evaluate, seed_everything, train
from objectives import OBJECTIVES, MeasureContext, Objective

WEIGHTS_DIR = "weights"


def weights_path(run_dir: Path, number: int) -> Path:
    return run_dir / WEIGHTS_DIR / f"trial-{number:05d}.safetensors"


def save_weights(model: nn.Module, path: Path) -> None:
    """Atomic write (tmp + rename), so a killed worker never leaves a half file under the name."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    from safetensors.torch import load_model

    load_model(model, str(path))
    return model.eval()


def resolve_objectives(exp: Experiment) -> dict[str, Objective]:
    """Every metric the search measures: the objectives, then constrained metrics not among them."""
    names = list(exp.objectives) + [c for c in exp.constraints if c not in exp.objectives]
    return {n: OBJECTIVES.get(n) for n in names}


def directions(exp: Experiment) -> dict[str, str]:
    return {
        n: (spec.direction or OBJECTIVES.get(n).direction) for n, spec in exp.objectives.items()
    }


@dataclass
class ExperimentProblem:
    """An experiment as a search problem (see :class:`nas.search.Problem`)."""

    exp: Experiment
    run_dir: Path
    splits: Splits | None = None
    space: Space = field(init=False)
    directions: dict[str, str] = field(init=False)
    constraints: dict[str, Bound] = field(init=False)
    metrics: dict[str, Objective] = field(init=False)

    def __post_init__(self) -> None:
        self.space = resolve_space(self.exp.space.name)
        self.directions = directions(self.exp)
        self.constraints = dict(self.exp.constraints)
        self.metrics = resolve_objectives(self.exp)
        if self.splits is None:
            self.splits = load_data(self.exp.data)

    @property
    def data(self) -> Splits:
        assert self.splits is not None
        return self.splits

    def _ctx(self, name: str, split: Split | None) -> MeasureContext:
        spec = self.exp.objectives.get(name)
        return MeasureContext(self.data.input_shape, split, spec.args if spec else {})

    def sample(self, trial: optuna.trial.BaseTrial) -> nn.Module:
        return build_model(
            self.space,
            trial,
            input_shape=self.data.input_shape,
            num_classes=self.data.num_classes,
            args=self.exp.space.args,
        )

    def measure(self, model: nn.Module, *, trained: bool, split: Split | None) -> dict[str, float]:
        return {
            n: o.measure(model, self._ctx(n, split))
            for n, o in self.metrics.items()
            if o.needs_training == trained
        }

    def static(self, model: nn.Module) -> dict[str, float]:
        return self.measure(model, trained=False, split=None)

    def evaluate(self, model: nn.Module, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        seed = self.exp.search.seed + trial.number
        seed_everything(seed)
        t0 = time.perf_counter()
        stats = train(model, self.data.train, self.exp.train, seed=seed)
        trial.set_user_attr("train_seconds", time.perf_counter() - t0)
        trial.set_user_attr("train_steps", stats["steps"])
        metrics = self.measure(model, trained=True, split=self.data.val)
        metrics["test_accuracy"] = evaluate(model, self.data.test)  # reported, never optimised
        save_weights(model, weights_path(self.run_dir, trial.number))
        return metrics


def preflight(exp: Experiment, splits: Splits) -> None:
    """Fail fast on bad space args: build one candidate from a throwaway trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    try:
        build_model(
            resolve_space(exp.space.name),
            trial,
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            args=exp.space.args,
        )
    except NasError:
        raise
    except Exception as err:
        raise NasError(
            f"space {exp.space.name!r} raised {type(err).__name__}: {err}; fix the "
            f"space or its args"
        ) from None
