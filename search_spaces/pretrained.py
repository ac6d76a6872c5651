"""``pretrained``: a fixed, already trained architecture (search only its compression).

    space: {name: pretrained, args: {run: runs/fashion-mnist, select: knee}}  # a run's model
    space: {name: pretrained, args: {path: model.pt}}                        # torch.save(model)
    base_model: runs/fashion-mnist/exports/trial-00042     # the same, as a top-level key

``path`` may be an export folder of ``nas export`` (``config.json`` + ``weights.safetensors``, or
``model.pt`` when compressed), its ``weights.safetensors``, a run folder, or a model file. The
data may differ from the model's (transfer learning): the input shape must match; for another
number of classes the last Linear is replaced by a new one, trained by the run's ``train:``.

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
        if p.is_dir() and (p / "experiment.yaml").is_file():
            return _load(str(p), select, None)  # a run folder
        if p.is_dir() or p.suffix == ".safetensors":
            return _load_export(p)
        if not p.is_file():
            raise ValueError(
                f"pretrained: path {path!r} does not exist; pass an export folder, a run folder, "
                "a weights.safetensors beside its config.json, or a torch.save()d nn.Module file"
            )
        try:
            model = torch.load(p, weights_only=False)  # the user's own model file
        except Exception as e:
            raise ValueError(
                f"pretrained: {path!r} does not load ({type(e).__name__}); pass a file written "
                "by torch.save(model), or an export folder"
            ) from None
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"pretrained: {path!r} holds a {type(model).__name__}, not an "
                f"nn.Module; save it with torch.save(model, path)"
            )
        return model.eval()
    from nas.run_folder import RunFolder, select_points, trial_model

    r = RunFolder.open(run)  # type: ignore[arg-type]
    selected = select_points(r, r.feasible_front(), select)
    return as_float(trial_model(r, selected[0])).eval()


def _load_export(p: Path) -> nn.Module:
    """A model exported by ``nas export`` (its folder, or its weights.safetensors beside
    config.json): the whole module when compression changed it, else rebuilt from the config."""
    folder = p if p.is_dir() else p.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"pretrained: {str(p)!r} has no config.json beside it; pass a folder written by "
            "`nas export` (or its weights.safetensors), a run folder, or a model.pt"
        )
    import json

    from nas.space import rebuild_from_config
    from nas.weights import load_module, load_weights

    config = json.loads(config_file.read_text())
    if (folder / "model.pt").is_file():  # its space imported first: it may define the classes
        return as_float(load_module(folder / "model.pt", config.get("space"))).eval()
    model = rebuild_from_config(config)
    weights = p if p.suffix == ".safetensors" else folder / "weights.safetensors"
    return load_weights(model, weights)


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Transfer to a dataset with another number of classes: the last Linear (the classifier)
    replaced by a freshly initialised one with ``num_classes`` outputs; the rest is kept."""
    last = None
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, attr, child)
    if last is None:
        raise ValueError(
            "pretrained: the model has no Linear classifier to replace for the new number of "
            f"classes ({num_classes}); use a model trained on this dataset"
        )
    parent, attr, old = last
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def as_float(model: nn.Module) -> nn.Module:
    """A compressed trial as a plain float model to compress again: fake-quant removed (weights
    keep their quantized values), bit widths and the record of what was applied dropped."""
    from nas.compress import as_deployed

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
    new_head_ok: bool = True,
) -> nn.Module:
    """A copy of a trained model from a run folder (``run`` + ``select``) or ``path`` (an export
    folder, a weights.safetensors beside its config.json, a run folder, or a model.pt file).

    For a dataset with another number of classes the classifier is replaced (``new_head_ok``)."""
    if (run is None) == (path is None):
        raise ValueError(
            "pretrained: give exactly one of run (a run folder) or path (a model "
            "file), e.g. args: {run: runs/fashion-mnist, select: knee}"
        )
    model = copy.deepcopy(_load(run, str(select), path))
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(2, *input_shape))
        except Exception as e:
            raise ValueError(
                f"pretrained: the model does not run on this dataset's {tuple(input_shape)} "
                f"inputs ({type(e).__name__}); use a model trained on inputs of that shape"
            ) from None
    if out.dim() == 2 and out.shape[1] != num_classes and new_head_ok:
        model = new_head(model, num_classes)
        out = model(torch.zeros(2, *input_shape))
    if out.shape != (2, num_classes):
        raise ValueError(
            f"pretrained: the model maps {tuple(input_shape)} inputs to "
            f"{tuple(out.shape[1:])} outputs, the dataset needs {num_classes} "
            f"classes; pick a model trained on this dataset"
        )
    return model
