"""Search spaces: ``space(trial, *, input_shape, num_classes, **args) -> nn.Module``.

A space is define-by-run (Optuna's ``trial.suggest_*``), so conditional choices read naturally and
``space(FixedTrial(params), ...)`` rebuilds the model of a stored trial with the same code.
A space is named by a registered name (``nas spaces`` lists them), ``"path/file.py:fn"`` or
``"package.module:fn"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol

import optuna
import torch
from torch import nn

from nas.errors import NasError
from nas.registry import Registry
from nas.user_code import load_callable


class Space(Protocol):
    def __call__(
        self,
        trial: optuna.trial.BaseTrial,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        **args: Any,
    ) -> nn.Module: ...


SPACES: Registry[Space] = Registry("space")
SPACE_PROVIDERS = "nas.spaces"  # the entry-point group of packages that provide spaces
_providers_loaded = False


def _load_providers() -> None:
    """Register the spaces of every installed provider (``search_spaces``: the built-ins)."""
    global _providers_loaded
    if _providers_loaded:
        return
    from importlib.metadata import entry_points

    found = entry_points(group=SPACE_PROVIDERS)
    if not found:
        raise NasError(
            "no search spaces are installed (entry point group 'nas.spaces' is empty); "
            "install the project: pip install -e . (make setup does it)"
        )
    for ep in found:
        for name, fn in ep.load().items():
            SPACES.register(name, fn)
    _providers_loaded = True


def list_spaces() -> list[str]:
    _load_providers()
    return SPACES.names()


def describe_args(space: Space) -> list[str]:
    """A space's keyword arguments (its ``space.args``) as ``name = default`` lines, with the
    values it takes where the space declares them in a ``choices`` attribute (a space that takes
    ``**args`` names them and their defaults in a ``defaults`` attribute)."""
    choices = getattr(space, "choices", {})
    out = []
    for name, value in getattr(space, "defaults", {}).items():  # a space taking **args
        out.append(f"{name} = {list(value) if isinstance(value, tuple) else value!r}")
    for p in inspect.signature(space).parameters.values():
        if p.kind != p.KEYWORD_ONLY or p.name in ("input_shape", "num_classes"):
            continue
        default = p.default
        if isinstance(default, tuple):
            default = list(default)
        line = f"{p.name} = {default!r}" if default is not p.empty else f"{p.name} (required)"
        if p.name in choices:
            line += f"  (of {', '.join(repr(c) for c in choices[p.name])})"
        out.append(line)
    return out


def resolve_space(name: str) -> Space:
    """A registered space by name, or a user's space from ``file.py:fn`` / ``module:fn``."""
    if ":" in name:
        return load_callable(name, "space")  # type: ignore[return-value]
    _load_providers()
    return SPACES.get(name)


def build_model(
    space: Space,
    trial: optuna.trial.BaseTrial,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Call a space; a space that raises ``ValueError``/``TypeError`` on its args is user input."""
    try:
        model = space(
            trial, input_shape=tuple(input_shape), num_classes=num_classes, **dict(args or {})
        )
    except (ValueError, TypeError) as err:
        raise NasError(f"space: {err}") from None
    if not isinstance(model, nn.Module):
        raise NasError(
            f"space returned {type(model).__name__}, not a torch.nn.Module; return the model"
        )
    return model


def check_output(model: nn.Module, x: torch.Tensor, num_classes: int, space: str) -> None:
    """One forward pass on a few examples ``x``, before any training: the model must take the
    data and return logits of shape (batch, ``num_classes``)."""
    x = x.float()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise NasError(
            f"space {space!r}: a model fails on a batch of the data of shape "
            f"{tuple(x.shape)} ({type(err).__name__}: {err}); make the space take input_shape"
        ) from None
    finally:
        model.train(was_training)
    want = (len(x), num_classes)
    if not isinstance(out, torch.Tensor):
        raise NasError(
            f"space {space!r}: the model returns {type(out).__name__}, not a tensor of logits; "
            f"return logits of shape (batch, num_classes)"
        )
    if tuple(out.shape) != want:
        raise NasError(
            f"space {space!r}: the model returns shape {tuple(out.shape)} for a batch of "
            f"{len(x)}, expected {want} (the data has {num_classes} classes); end the "
            f"network with a layer of num_classes outputs (flatten any spatial dimensions)"
        )


def rebuild(
    space: Space,
    params: Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Rebuild a stored trial's model from its params (``optuna.trial.FixedTrial``)."""
    return build_model(
        space,
        optuna.trial.FixedTrial(dict(params)),
        input_shape=input_shape,
        num_classes=num_classes,
        args=args,
    )


def rebuild_from_config(config: Mapping[str, Any]) -> nn.Module:
    """The (untrained) architecture of an export's ``config.json``: space, params, args, shapes."""
    return rebuild(
        resolve_space(config["space"]),
        config["params"],
        input_shape=tuple(config["input_shape"]),
        num_classes=int(config["num_classes"]),
        args=config.get("args") or {},
    )
