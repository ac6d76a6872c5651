"""Teachers for knowledge distillation, prepared once per run and cached in the run folder.

A teacher is ``largest`` (the largest model of the run's space, by parameters, among the space's
maximal choices and random draws, trained once with the run's ``train:`` recipe) or a trained
model: a ``torch.save``d ``nn.Module`` file or a run folder (its knee model). Its logits on the
training split are what students learn from; they are computed once and kept with the teacher in
``RUN_DIR/teacher/<name>/`` (``model.pt``, ``logits.safetensors``, ``info.json``), so every trial
and every worker reuses them (the first worker prepares them under a file lock, the others wait).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from torch import nn

from nas.errors import NasError

if TYPE_CHECKING:
    from nas.config import Experiment
    from nas.data import Splits

TEACHER_DIR = "teacher"
LARGEST = "largest"
DRAWS = 32  # random architectures drawn besides the maximal one when looking for the largest


class _LargestTrial:
    """A stand-in trial that takes the largest value of every choice (numeric ones; the first
    choice otherwise), to build the space's biggest architecture."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def _keep(self, name: str, value: Any) -> Any:
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return self._keep(name, high)

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return self._keep(name, high)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        numeric = [c for c in choices if isinstance(c, int | float) and not isinstance(c, bool)]
        return self._keep(name, max(numeric) if len(numeric) == len(choices) else choices[0])


def largest_architecture(exp: Experiment, splits: Splits) -> tuple[nn.Module, dict[str, Any]]:
    """The model with the most parameters among the maximal draw and ``DRAWS`` random ones."""
    from nas.space import build_model, resolve_space
    from objectives import count_params

    space = resolve_space(exp.space.name)
    kw = {"input_shape": splits.input_shape, "num_classes": splits.num_classes}
    best: tuple[int, nn.Module, dict[str, Any]] | None = None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=exp.search.seed))
    for i in range(DRAWS + 1):
        trial: Any = _LargestTrial() if i == 0 else study.ask()
        try:
            model = build_model(space, trial, args=exp.space.args, **kw)
        except NasError:
            continue  # an invalid combination of the space: skip it
        n = count_params(model)
        if best is None or n > best[0]:
            best = (n, model, dict(trial.params))
    if best is None:
        raise NasError("distill: no architecture of the space could be built for the teacher")
    return best[1], best[2]


def _load_given(spec: str) -> nn.Module:
    from search_spaces.pretrained import _load

    p = Path(spec)
    if not p.exists():
        raise NasError(
            f"distill.teacher {spec!r} does not exist; give a torch.save()d model file, a run "
            f"folder, or 'largest'"
        )
    try:
        model = _load(str(p), "knee", None) if p.is_dir() else _load(None, "knee", str(p))
    except ValueError as e:
        raise NasError(f"distill.teacher: {e}") from None
    except Exception as e:
        raise NasError(
            f"distill.teacher {spec!r} does not load ({type(e).__name__}: {e}); give a file "
            f"written by torch.save(model) or a run folder"
        ) from None
    return copy.deepcopy(model).eval()


def _slug(spec: str) -> str:
    if spec == LARGEST:
        return LARGEST
    return "given-" + hashlib.sha1(str(Path(spec).resolve()).encode()).hexdigest()[:10]


@torch.no_grad()
def _logits(model: nn.Module, split: Any, batch: int = 256) -> torch.Tensor:
    """Logits of every example of ``split`` in order (a streamed split's one pass of its
    training transform: distillation then looks them up by example index)."""
    model.eval()
    return torch.cat([model(x) for x, _, _ in split.loader(batch)])


def teacher_logits(exp: Experiment, splits: Splits, run_dir: Path, spec: str) -> torch.Tensor:
    """The teacher's logits on ``splits.train`` (prepared on first use, then read from disk)."""
    from safetensors.torch import load_file, save_file

    from nas.search._worker import file_lock

    folder = Path(run_dir) / TEACHER_DIR / _slug(spec)
    path = folder / "logits.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / ".lock"):
        if not path.is_file():
            model, info = _prepare(exp, splits, spec)
            torch.save(model, folder / "model.pt")
            (folder / "info.json").write_text(json.dumps(info, indent=2))
            tmp = folder / f".logits.{os.getpid()}.tmp"
            save_file({"logits": _logits(model, splits.train).contiguous()}, str(tmp))
            os.replace(tmp, path)
    logits = load_file(str(path))["logits"]
    if logits.shape != (len(splits.train), splits.num_classes):
        raise NasError(
            f"{path} holds logits for {tuple(logits.shape)}, the data has "
            f"{(len(splits.train), splits.num_classes)}; delete {folder} to prepare it again"
        )
    return logits


def check_teacher(spec: str, splits: Splits) -> nn.Module:
    """A given teacher (file or run folder): loaded and checked against the data, or NasError."""
    model = _load_given(spec)
    with torch.no_grad():
        try:
            out = model.eval()(splits.train.head(2).x)
        except Exception as e:
            raise NasError(
                f"distill.teacher {spec!r} does not run on this dataset's "
                f"{tuple(splits.input_shape)} inputs ({type(e).__name__}); use a teacher "
                "trained on this dataset"
            ) from None
    if tuple(out.shape) != (2, splits.num_classes):
        raise NasError(
            f"distill.teacher {spec!r} outputs {tuple(out.shape[1:])} logits, the dataset has "
            f"{splits.num_classes} classes; use a teacher trained on this dataset"
        )
    return model


def _prepare(exp: Experiment, splits: Splits, spec: str) -> tuple[nn.Module, dict[str, Any]]:
    from nas.train import evaluate, seed_everything, train
    from objectives import count_params

    if spec == LARGEST:
        model, params = largest_architecture(exp, splits)
        seed_everything(exp.search.seed)
        print(f"[distill] training the teacher ({count_params(model)} params) once", flush=True)
        train(model, splits.train, exp.train, seed=exp.search.seed)
        info: dict[str, Any] = {"teacher": LARGEST, "params": params}
    else:
        model = check_teacher(spec, splits)
        info = {"teacher": str(Path(spec).resolve())}
    info |= {
        "param_count": count_params(model),
        "val_accuracy": evaluate(model, splits.val),
        "test_accuracy": evaluate(model, splits.test),
    }
    return model, info
