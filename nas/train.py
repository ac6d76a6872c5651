"""Training loop with an epoch or step budget, seeded, on in-memory tensors.

``hooks`` let techniques add a regulariser to the loss (e.g. network slimming's BN-gamma L1) or act
after each optimizer step (e.g. re-applying masks); the pipeline passes them in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nas.config import TrainConfig
from nas.data import Split

LossHook = Callable[[nn.Module], torch.Tensor]
# (logits, targets, indices of the batch in the training split) -> loss; replaces cross-entropy
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * math.ceil(n_examples / cfg.batch_size)))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    if schedule == "step":
        return 0.1 ** (step * 3 // steps)  # /10 at 1/3 and 2/3 of the budget
    return 1.0


def train(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    loss_hooks: Sequence[LossHook] = (),
    on_step: Callable[[int, int], None] | None = None,
    criterion: Criterion | None = None,
) -> dict[str, float]:
    """Train ``model`` in place; return ``{"steps", "final_loss"}``.

    ``criterion(logits, targets, indices)`` replaces the cross-entropy loss (e.g. distillation,
    which looks up the teacher's logits of those training examples).

    ``on_step(step, steps)`` runs after every optimizer step (it may evaluate the model, or raise
    to stop training, e.g. :class:`nas.search.Stopped`).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = total_steps(cfg, len(data))
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg.schedule, s, steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    n, step, running = len(data), 0, float("nan")
    while step < steps:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs > 1 example
                continue
            logits = model(data.x[idx])
            if criterion is None:
                loss = loss_fn(logits, data.y[idx])
            else:
                loss = criterion(logits, data.y[idx], idx)
            for hook in loss_hooks:
                loss = loss + hook(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = loss.item() if math.isnan(running) else 0.9 * running + 0.1 * loss.item()
            step += 1
            if on_step is not None:
                on_step(step, steps)
                model.train()
            if step >= steps:
                break
    model.eval()
    return {"steps": float(step), "final_loss": running}


@torch.no_grad()
@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model`` on ``data``. Small batches: a small model's activations then
    stay in the CPU cache (batch 128 scores 1,000 28x28 images about 5x faster than 1024)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += int(
            (model(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum()
        )
    model.train(was_training)
    return correct / max(len(data), 1)
