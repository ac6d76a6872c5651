"""``pretrained``: a fixed, already trained architecture (search only its compression).

    space: {name: pretrained, args: {run: runs/fashion-mnist, select: knee}}  # a run's model
    space: {name: pretrained, args: {path: model.pt}}                        # torch.save(model)

It samples no parameter: every trial starts from a copy of the same trained model, and training
(``train:``) continues from its weights, so keep that budget small (it is a fine-tune: the
sparsity-inducing training that slimming needs happens there). ``select`` is ``knee`` (default)
or a trial number of the run's completed feasible trials; a compressed trial is loaded as its float
equivalent (fake-quant removed, its weights keeping their quantized values).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import optuna
import torch
from torch import nn


@cache
def _load(run: str | None, select: str, path: str | None) -> nn.Module:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(
                f"pretrained: path {path!r} does not exist; pass a torch.save()d nn.Module file"
            )
        model = torch.load(p, weights_only=False)  # the user's own model file
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"pretrained: {path!r} holds a {type(model).__name__}, not an "
                f"nn.Module; save it with torch.save(model, path)"
            )
        return model.eval()
    from nas.export import select_points, trial_model
    from nas.runs import Run

    r = Run.open(run)  # type: ignore[arg-type]
    front = r.front().front
    selected = select_points(r, front, select)
    return as_float(trial_model(r, selected[0])).eval()


def as_float(model: nn.Module) -> nn.Module:
    """A compressed trial as a plain float model to compress again: fake-quant removed (weights
    keep their quantized values), bit widths and the record of what was applied dropped."""
    from nas.pipeline import as_deployed

    model = as_deployed(model, getattr(model, "nas_compression", {}))
    for m in model.modules():
        if "weight_bits" in vars(m):
            del m.weight_bits
    if "nas_compression" in vars(model):
        del model.nas_compression
    return model


def pretrained(
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    run: str | None = None,
    select: str | int = "knee",
    path: str | None = None,
) -> nn.Module:
    """A copy of a trained model from a run folder (``run`` + ``select``) or a file (``path``)."""
    if (run is None) == (path is None):
        raise ValueError(
            "pretrained: give exactly one of run (a run folder) or path (a model "
            "file), e.g. args: {run: runs/fashion-mnist, select: knee}"
        )
    model = copy.deepcopy(_load(run, str(select), path))
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, *input_shape))
    if out.shape != (2, num_classes):
        raise ValueError(
            f"pretrained: the model maps {tuple(input_shape)} inputs to "
            f"{tuple(out.shape[1:])} outputs, the dataset needs {num_classes} "
            f"classes; pick a model trained on this dataset"
        )
    return model
