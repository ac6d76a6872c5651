"""One pass of a model over calibration data, batch by batch, for data-driven importance scores."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def over_batches(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    after_batch: Callable[[], None],
    *,
    backward: bool,
    batch: int = 64,
) -> None:
    """Run ``model`` over ``data`` in eval mode (BatchNorm statistics stay as trained), calling
    ``after_batch()`` after each batch; with ``backward`` the cross-entropy gradients of the batch
    are in the parameters' ``.grad`` then. Modes are restored and gradients cleared afterwards."""
    x, y = data
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for i in range(0, len(x), batch):
            if backward:
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
            else:
                with torch.no_grad():
                    model(x[i : i + batch])
            after_batch()
    finally:
        model.zero_grad(set_to_none=True)
        for m, mode in modes.items():
            m.training = mode
