"""Image data streamed from disk through ``torch.utils.data.DataLoader``.

Sources: ``imagefolder`` (torchvision's ``ImageFolder`` layout), ``cifar10`` / ``cifar100`` (the
python-pickle batch folders) and a user's ``torch.utils.data.Dataset``. Only file names (image
folders) or the compact uint8 arrays (CIFAR) are held in memory; images are decoded and transformed
by the loader's workers batch by batch, so a folder larger than memory works.

A :class:`StreamSplit` is one split: parts of base datasets (index arrays into them) and the
transform its items go through (training augmentation, or the evaluation resize + crop). It offers
the same ``loader`` / ``head`` / ``__len__`` as the in-memory :class:`nas.data.Split`.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from nas.config import DataConfig, LoaderConfig, TransformsConfig
from nas.errors import NasError
from nas.splits import SPLIT_SEED, Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, indices in the split


class _View(Dataset):
    """Items ``indices`` of ``base`` through ``transform``, as ``(x, y, offset + position)``."""

    def __init__(
        self,
        base: Dataset,
        indices: np.ndarray | None,
        transform: Callable[[Any], Any] | None,
        offset: int,
    ) -> None:
        self.base, self.indices, self.transform, self.offset = base, indices, transform, offset

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        j = int(self.indices[i]) if self.indices is not None else i
        x, y = self.base[j]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(y), self.offset + i


@dataclass(frozen=True)
class StreamSplit:
    """A split streamed from datasets: ``parts`` are ``(base dataset, indices or None)``."""

    parts: tuple[tuple[Dataset, np.ndarray | None], ...]
    transform: Callable[[Any], Any] | None
    loader_cfg: LoaderConfig
    targets: np.ndarray | None = None  # the labels in order, when known without decoding
    # what ``head`` uses: the evaluation transform (a training split's augmentation is random,
    # and calibration / checks must see the same examples every time)
    head_transform: Callable[[Any], Any] | None = None

    def __len__(self) -> int:
        return sum(len(i) if i is not None else len(b) for b, i in self.parts)  # type: ignore[arg-type]

    def dataset(self) -> Dataset:
        views, offset = [], 0
        for base, idx in self.parts:
            views.append(_View(base, idx, self.transform, offset))
            offset += len(views[-1])
        return views[0] if len(views) == 1 else ConcatDataset(views)

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        workers: int | None = None,
    ) -> Iterable[Batch]:
        """Batches ``(x, y, indices)``; re-iterable (one pass per epoch, workers kept)."""
        cfg = self.loader_cfg
        n_workers = cfg.workers if workers is None else workers
        sampler = (
            torch.utils.data.RandomSampler(range(len(self)), generator=generator)
            if shuffle
            else None
        )
        return DataLoader(
            self.dataset(),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=n_workers,
            pin_memory=torch.cuda.is_available() if cfg.pin_memory == "auto" else cfg.pin_memory,
            persistent_workers=cfg.persistent_workers and n_workers > 0,
            prefetch_factor=cfg.prefetch_factor if n_workers > 0 else None,
            generator=generator,
        )

    def head(self, n: int) -> Split:
        """The first ``n`` items, decoded and transformed for evaluation (deterministic), as
        an in-memory split: int8 calibration and checks use it."""
        if self.head_transform is not None:
            return replace(self, transform=self.head_transform, head_transform=None).head(n)
        ds = self.dataset()
        items = [ds[i] for i in range(min(n, len(self)))]
        x = torch.stack([torch.as_tensor(a) for a, _, _ in items])
        return Split(x.float(), torch.tensor([b for _, b, _ in items], dtype=torch.int64))

    def take(self, indices: np.ndarray) -> StreamSplit:
        """Items ``indices`` (positions in this split) of a one-part split."""
        ((base, idx),) = self.parts
        picked = np.asarray(indices) if idx is None else idx[np.asarray(indices)]
        targets = self.targets[np.asarray(indices)] if self.targets is not None else None
        return replace(self, parts=((base, picked),), targets=targets)

    def with_transform(self, transform: Callable[[Any], Any] | None) -> StreamSplit:
        return replace(self, transform=transform)

    def concat(self, other: StreamSplit) -> StreamSplit:
        """This split's items, then ``other``'s, through this split's transform."""
        targets = None
        if self.targets is not None and other.targets is not None:
            targets = np.concatenate([self.targets, other.targets])
        return replace(self, parts=self.parts + other.parts, targets=targets)

    def labels(self) -> np.ndarray:
        """The labels in order: ``targets`` when known, else read through the loader (slow:
        decodes every item once; give the Dataset a ``targets`` attribute to skip it)."""
        if self.targets is not None:
            return self.targets
        ys = [y for _, y, _ in self.loader(256)]
        return torch.cat(ys).numpy() if ys else np.zeros(0, dtype=np.int64)


# ---- sources ------------------------------------------------------------------------------------


class _SafeImageFolder(Dataset):
    """torchvision's ``ImageFolder`` (file names only in memory) whose unreadable images are
    skipped: the item is replaced by the next readable one and the file named once on stderr."""

    def __init__(self, root: Path, color: str) -> None:
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root), loader=_identity)
        except FileNotFoundError as err:
            raise NasError(
                f"imagefolder: {root}: {err}; put the images of each class in their own "
                f"sub-folder (root/CLASS/IMAGE.png)"
            ) from None
        self.mode = "RGB" if color == "rgb" else "L"
        self.targets = np.asarray(self.folder.targets, dtype=np.int64)
        self.classes = list(self.folder.classes)
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        n = len(self.folder.samples)
        for k in range(n):
            path, target = self.folder.samples[(i + k) % n]
            try:
                with Image.open(path) as img:
                    return img.convert(self.mode), target
            except Exception as err:  # a corrupt file must not stop a search
                if path not in self.skipped:
                    self.skipped.add(path)
                    print(
                        f"[data] skipped an unreadable image {path} ({type(err).__name__}: "
                        f"{err}); {len(self.skipped)} skipped so far in this process",
                        file=sys.stderr,
                        flush=True,
                    )
        raise NasError(f"imagefolder: no readable image among {n} files")


def _identity(path: str) -> str:
    return path


class _ArrayImages(Dataset):
    """uint8 images ``(N, C, H, W)`` held compactly; items are ``tv_tensors.Image``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: list[str]) -> None:
        self.x, self.targets, self.classes = x, y, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from torchvision import tv_tensors

        return tv_tensors.Image(torch.from_numpy(self.x[i])), int(self.targets[i])


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: load only dicts, lists, bytes and numpy arrays from them."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
    "cifar100": ("cifar-100-python", ["train"], "test"),
}


def _read_batch(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as err:
        raise NasError(
            f"{path}: not a CIFAR python batch ({type(err).__name__}: {err}); use the "
            f"'python version' of the dataset"
        ) from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar(name: str, root: str | None) -> tuple[Dataset, Dataset]:
    sub, train_files, test_file = CIFAR_FILES[name]
    if root is None:
        raise NasError(f"{name}: set data.root to the folder holding {sub}/ (nothing downloads)")
    folder = Path(root)
    if (folder / sub).is_dir():
        folder = folder / sub
    expected = [*train_files, test_file]
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing:
        raise NasError(
            f"{name}: {folder} lacks {', '.join(missing)}; data.root must hold the python "
            f"batches ({', '.join(expected)}) or a {sub}/ folder with them (nothing downloads)"
        )
    label_key = "labels" if name == "cifar10" else "fine_labels"
    meta_file = folder / ("batches.meta" if name == "cifar10" else "meta")
    meta = _read_batch(meta_file) if meta_file.is_file() else {}
    classes = list(meta.get("label_names") or meta.get("fine_label_names") or [])

    def load(files: Sequence[str]) -> _ArrayImages:
        batches = [_read_batch(folder / f) for f in files]
        try:
            x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
            y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        except KeyError as err:
            raise NasError(f"{name}: {folder}: a batch has no {err} entry; is it {name}?") from None
        return _ArrayImages(x.reshape(-1, 3, 32, 32), y, classes)

    return load(train_files), load([test_file])


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def _imagefolder(cfg: DataConfig, color: str) -> tuple[Dataset, Dataset | None, Dataset]:
    if cfg.root is None:
        raise NasError("imagefolder: set data.root to a folder of class sub-folders")
    root = Path(cfg.root)
    if not root.is_dir():
        raise NasError(f"imagefolder: data.root {str(root)!r} does not exist; fix the path")
    if (root / "train").is_dir():
        if not (root / "val").is_dir() and not (root / "test").is_dir():
            raise NasError(
                f"imagefolder: {root} has train/ but no val/ or test/; add one, or put the "
                f"class folders directly under {root}"
            )
        train = _SafeImageFolder(root / "train", color)
        val = _SafeImageFolder(root / "val", color) if (root / "val").is_dir() else None
        test = _SafeImageFolder(root / "test", color) if (root / "test").is_dir() else None
        for part in (val, test):
            if part is not None and part.classes != train.classes:
                raise NasError(
                    f"imagefolder: {root}: the class folders of train/ ({train.classes[:5]}...) "
                    f"and val/ or test/ ({part.classes[:5]}...) differ; use the same classes"
                )
        # no test/: val is the test split and the search's val is held out of train
        return (train, None, val) if test is None else (train, val, test)  # type: ignore[return-value]
    if not _has_images(root):
        raise NasError(
            f"imagefolder: {root} is empty; it needs a sub-folder per class holding its images "
            f"(or train/ and val/ folders of them)"
        )
    whole = _SafeImageFolder(root, color)
    return whole, None, None  # split below with the fixed split seed


# ---- transforms ---------------------------------------------------------------------------------


def first_size(ds: Dataset) -> tuple[int, int]:
    """(H, W) of the first item before any transform."""
    from PIL import Image

    x, _ = ds[0]
    if isinstance(x, Image.Image):
        w, h = x.size
        return h, w
    return tuple(torch.as_tensor(np.asarray(x)).shape[-2:])  # type: ignore[return-value]


def preprocessing(cfg: TransformsConfig, size: int) -> dict[str, Any]:
    """What a deployed model expects: written into every export's metadata."""
    gray = cfg.color == "gray"
    mean = cfg.mean or ([0.5] if gray else list(IMAGENET_MEAN))
    std = cfg.std or ([0.5] if gray else list(IMAGENET_STD))
    resize = cfg.resize or (round(size * 8 / 7) if size >= 64 else size)
    return {
        "input_size": [1 if gray else 3, size, size],
        "layout": "NCHW",
        "channel_order": "L" if gray else "RGB",
        "resize_shorter_side": resize,
        "center_crop": size,
        "value_range": [0.0, 1.0],
        "mean": mean,
        "std": std,
        "formula": "x = (pixel / 255 - mean) / std per channel",
    }


def build_transform(cfg: TransformsConfig, pre: dict[str, Any], train: bool) -> Callable:
    """The v2 pipeline of a split: train augmentation or the evaluation resize + crop."""
    from torchvision.transforms import v2

    size, resize = pre["center_crop"], pre["resize_shorter_side"]
    crop = cfg.crop if cfg.crop != "auto" else ("random_resized" if size >= 64 else "pad")
    ops: list[Any] = [v2.ToImage()]
    if cfg.color == "gray":
        ops.append(v2.Grayscale(1))
    if train and crop == "random_resized":
        ops.append(v2.RandomResizedCrop(size, antialias=True))
    else:
        ops += [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
        if train and crop == "pad" and cfg.pad > 0:
            ops.append(v2.RandomCrop(size, padding=cfg.pad))
    if train and cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if train and cfg.augment == "trivial":
        ops.append(v2.TrivialAugmentWide())
    elif train and cfg.augment == "randaugment":
        ops.append(v2.RandAugment())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])]
    return v2.Compose(ops)


# ---- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Streams:
    train: StreamSplit
    val: StreamSplit | None
    test: StreamSplit
    num_classes: int | None
    preprocessing: dict[str, Any]
    eval_transform: Callable[[Any], Any] | None = None


def _targets(ds: Dataset) -> np.ndarray | None:
    t = getattr(ds, "targets", None)
    return None if t is None else np.asarray(t, dtype=np.int64)


def as_split(ds: Dataset, loader: LoaderConfig) -> StreamSplit:
    return StreamSplit(((ds, None),), None, loader, _targets(ds))


def load_streams(cfg: DataConfig) -> Streams:
    """Train / (val) / test of a streamed source, transforms set (val and test: evaluation)."""
    tcfg = cfg.transforms or TransformsConfig()
    if cfg.name == "imagefolder":
        train, val, test = _imagefolder(cfg, tcfg.color)
        if test is None:  # one folder: the test split is held out of it, like val
            test_idx, train_idx = _stratified(_targets(train), len(train), cfg.val_fraction)
            whole = as_split(train, cfg.loader)
            parts = [whole.take(train_idx), None, whole.take(test_idx)]
        else:
            parts = [as_split(train, cfg.loader), None, as_split(test, cfg.loader)]
            if val is not None:
                parts[1] = as_split(val, cfg.loader)
        classes: int | None = len(train.classes)  # type: ignore[attr-defined]
    else:
        tr, te = _cifar(cfg.name, cfg.root)
        parts = [as_split(tr, cfg.loader), None, as_split(te, cfg.loader)]
        classes = 10 if cfg.name == "cifar10" else 100
    return with_transforms(parts[0], parts[1], parts[2], classes, tcfg)  # type: ignore[arg-type]


def with_transforms(
    train: StreamSplit,
    val: StreamSplit | None,
    test: StreamSplit,
    classes: int | None,
    tcfg: TransformsConfig,
    raw: bool = False,
) -> Streams:
    """Set each split's transform from ``tcfg`` (``raw``: a user's Dataset whose items are
    already tensors and no ``data.transforms`` was given: items are used as they are)."""
    base, _ = train.parts[0]
    if raw:
        x, _ = base[0]
        shape = list(torch.as_tensor(x).shape)
        pre = {"input_size": shape, "note": "a user Dataset's items, as it returns them"}
        return Streams(train, val, test, classes, pre)
    h, w = first_size(base)
    pre = preprocessing(tcfg, tcfg.size or min(h, w))
    evaluation = build_transform(tcfg, pre, train=False)
    return Streams(
        replace(
            train.with_transform(build_transform(tcfg, pre, train=True)),
            head_transform=evaluation,
        ),
        val.with_transform(evaluation) if val else None,
        test.with_transform(evaluation),
        classes,
        pre,
        evaluation,
    )


def _stratified(targets: np.ndarray | None, n: int, fraction: float) -> tuple[np.ndarray, ...]:
    """(held-out indices, kept indices), stratified when the labels are known; fixed seed."""
    rng = np.random.default_rng(SPLIT_SEED)
    if targets is None:
        order = rng.permutation(n)
        k = max(1, round(n * fraction))
        return np.sort(order[:k]), np.sort(order[k:])
    held = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        held.append(idx[: max(1, round(len(idx) * fraction))] if len(idx) > 1 else idx[:0])
    out = np.sort(np.concatenate(held))
    if len(out) == 0 or len(out) == n:
        raise NasError(
            f"cannot hold out {fraction:g} of {n} examples per class; add images or change "
            f"data.val_fraction"
        )
    return out, np.setdiff1d(np.arange(n), out)


def holdout(split: StreamSplit, fraction: float) -> tuple[StreamSplit, StreamSplit]:
    """(train, val) carved from a one-part streamed training split with the fixed split seed."""
    held, kept = _stratified(split.targets, len(split), fraction)
    return split.take(kept), split.take(held)
