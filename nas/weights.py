"""A trial's files in the run folder: ``weights/trial-NNNNN.safetensors`` (every completed trial)
and, for a trial whose compression changed its shapes, ``weights/trial-NNNNN.pt`` (the module)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from nas.errors import NasError
from nas.space import resolve_space

WEIGHTS_DIR = "weights"


def weights_path(run_dir: Path, number: int) -> Path:
    return run_dir / WEIGHTS_DIR / f"trial-{number:05d}.safetensors"


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by name, a tensor shared by several layers (parameter
    sharing) once, under its first name."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():  # the tensors themselves
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def save_weights(model: nn.Module, path: Path) -> None:
    """safetensors, shared weights stored once; atomic (tmp + rename), so a killed worker never
    leaves a half file under the name."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous() for k, v in unique_state(model).items()}, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load what :func:`save_weights` wrote into ``model`` (built with the same architecture)."""
    from safetensors.torch import load_file

    stored = load_file(str(path))
    want = unique_state(model)
    missing, extra = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
    bad = [k for k in want if k in stored and stored[k].shape != want[k].shape]
    if missing or extra or bad:
        raise RuntimeError(
            f"{path} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"other shapes {bad[:3]}"
        )
    with torch.no_grad():
        for k, t in want.items():
            t.copy_(stored[k])
    return model.eval()


def module_path(run_dir: Path, number: int) -> Path:
    return run_dir / WEIGHTS_DIR / f"trial-{number:05d}.pt"


def save_trial(model: nn.Module, run_dir: Path, number: int, *, structural: bool) -> None:
    """Weights as safetensors; a compressed model's whole module too (its shapes changed)."""
    save_weights(model, weights_path(run_dir, number))
    if structural:
        path = module_path(run_dir, number)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(model, tmp)
        os.replace(tmp, path)


def load_trial(run_dir: Path, number: int, space: str | None = None) -> nn.Module | None:
    """The saved module of a compressed trial (``None`` for an uncompressed one); see
    :func:`load_module`."""
    path = module_path(run_dir, number)
    return load_module(path, space) if path.is_file() else None


def load_module(path: Path, space: str | None) -> nn.Module:
    """A module saved whole (a trial's, an export's ``model.pt``), in eval mode.

    ``space`` (the run's space name) is imported first: a user's ``file.py:fn`` space defines
    the classes the saved module refers to.
    """
    if space and ":" in space:
        resolve_space(space)
    try:
        return torch.load(path, weights_only=False).eval()  # a run folder's or an export's file
    except (ImportError, AttributeError) as err:
        missing = getattr(err, "name", None) or str(err)
        raise NasError(
            f"the saved model {path} needs {missing!r}, which does not import here; make the "
            f"space {space!r} importable (install it or add its folder to PYTHONPATH) and run "
            f"the command again"
        ) from None
