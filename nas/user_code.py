"""A user's code named in an experiment: ``"path/file.py:fn"`` or ``"package.module:fn"``.

Ground floor: the space registry and the data loaders both import a user's function through here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.errors import NasError


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
