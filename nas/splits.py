"""An in-memory split and the fixed split seed: the ground both data paths stand on
(:mod:`nas.data` for in-memory datasets, :mod:`nas.image_data` for streamed ones)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

SPLIT_SEED = 0  # fixed: the val split must not depend on the search seed


class _TensorBatches:
    """Batches of an in-memory split; a new order from ``generator`` on each pass."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, gen: torch.Generator | None):
        self.split, self.batch_size, self.shuffle, self.gen = split, batch_size, shuffle, gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            if self.shuffle:
                yield self.split.x[idx], self.split.y[idx], idx
            else:
                s = slice(i, i + self.batch_size)
                yield self.split.x[s], self.split.y[s], idx


@dataclass(frozen=True)
class Split:
    """A split held in memory as tensors."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        workers: int | None = None,
    ) -> _TensorBatches:
        """Batches ``(x, y, indices)``; re-iterable (shuffled anew on each pass)."""
        return _TensorBatches(self, batch_size, shuffle, generator)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])

    def labels(self) -> np.ndarray:
        return self.y.numpy()
