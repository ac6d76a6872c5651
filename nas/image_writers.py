"""Write in-memory images to the on-disk formats that ``nas`` streams: an ``ImageFolder`` of PNGs
(``root/{train,val,test}/CLASS/N.png``) and CIFAR-format python batches.

Used by the benchmarks (Fashion-MNIST written out as 32x32 RGB) and the tests; handy to try a
real-format pipeline on data of your own.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def to_uint8_rgb(x: np.ndarray, size: int, rgb: bool = True) -> np.ndarray:
    """``(N, C, H, W)`` floats in [0, 1] (or uint8) -> ``(N, 3|C, size, size)`` uint8, resized
    with bilinear interpolation and grey replicated to three channels."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(x)
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    if rgb and t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_imagefolder(
    root: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
) -> Path:
    """``splits``: ``{"train": (x uint8 (N, C, H, W), y), "val": ..., "test": ...}``."""
    from PIL import Image

    for split, (x, y) in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            arr = img.transpose(1, 2, 0)
            pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            pil.save(root / split / classes[int(label)] / f"{i:06d}.png", compress_level=1)
    return root


def write_cifar(
    root: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
    batches: int = 5,
) -> Path:
    """CIFAR-10 format: ``data_batch_1..batches`` + ``test_batch`` + ``batches.meta`` (uint8
    ``(N, 3, 32, 32)`` images, flattened as CIFAR stores them)."""
    root.mkdir(parents=True, exist_ok=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        data = {"data": x.reshape(len(x), -1), "labels": [int(v) for v in y]}
        with open(root / name, "wb") as f:
            pickle.dump(data, f, protocol=2)

    x, y = train
    for i, idx in enumerate(np.array_split(np.arange(len(y)), batches), start=1):
        dump(f"data_batch_{i}", x[idx], y[idx])
    dump("test_batch", *test)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(classes)}, f, protocol=2)
    return root
