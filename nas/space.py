"""Search spaces: ``space(trial, *, input_shape, num_classes, **args) -> nn.Module``.

A space is define-by-run (Optuna's ``trial.suggest_*``), so conditional choices read naturally and
``space(FixedTrial(params), ...)`` rebuilds the model of a stored trial with the same code.
A space is named by a registered name (``nas spaces`` lists them), ``"path/file.py:fn"`` or
``"package.module:fn"``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from torch import nn

from nas.errors import NasError
from nas.registry import Registry


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
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        from search_spaces import BUILTIN_SPACES

        for name, fn in BUILTIN_SPACES.items():
            SPACES.register(name, fn)
        _builtins_loaded = True


def list_spaces() -> list[str]:
    _load_builtins()
    return SPACES.names()


def load_callable(spec: str, kind: str) -> Callable[..., Any]:
    """Import ``"path/file.py:fn"`` or ``"package.module:fn"``; errors name the spec and the fix."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise NasError(f"{kind} {spec!r}: write it as 'path/file.py:function' or 'module:function'")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise NasError(
                    f"{kind} file {str(path)!r} does not exist; check the path in {spec!r}"
                )
            # a stable name (not the per-process hash()): a module saved with torch.save names
            # its classes by it, and another process (export, report) must find them again
            digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            mod_name = f"_nas_user_{path.stem}_{digest}"
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)  # an edited file is imported again
            cached = sys.modules.get(mod_name)
            if cached is not None and getattr(cached, "__nas_stamp__", None) == stamp:
                fn = getattr(cached, attr, None)
                if callable(fn):
                    return fn
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            loader_spec.loader.exec_module(module)
            module.__nas_stamp__ = stamp  # type: ignore[attr-defined]
        else:
            module = importlib.import_module(target)
    except NasError:
        raise
    except ModuleNotFoundError as err:
        raise NasError(
            f"{kind} {spec!r}: cannot import {err.name!r}; install it or fix the module path"
        ) from None
    except Exception as err:
        raise NasError(
            f"{kind} {spec!r} raised {type(err).__name__} on import: {err}; fix that file"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise NasError(f"{kind} {spec!r}: {target} has no function {attr!r}; check the name")
    return fn


def resolve_space(name: str) -> Space:
    """A registered space by name, or a user's space from ``file.py:fn`` / ``module:fn``."""
    if ":" in name:
        return load_callable(name, "space")  # type: ignore[return-value]
    _load_builtins()
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
