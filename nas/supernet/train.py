"""Training a supernet once: the sandwich rule with in-place distillation (BigNAS / OFA).

Each step trains, on the same batch, the largest sub-network on the labels, then the smallest
and ``n_random`` random sub-networks on the largest one's soft predictions (in-place
distillation: no separate teacher), and takes one optimizer step on the summed gradients.

Checkpointed after every epoch (weights, optimizer, schedule, epoch), atomically, so training
resumes where it stopped and gives the same weights as an uninterrupted run. A checkpoint of
another supernet (space arguments, dataset, input shape, classes) is refused.

A sub-network's BatchNorm statistics are those of the whole supernet; :func:`recalibrate_bn`
re-estimates them for the active sub-network from a few hundred training images before it is
scored (no training).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.config import TrainConfig
from nas.data import Split
from nas.errors import NasError
from nas.supernet.elastic import ElasticMobileNet
from nas.train import _lr_factor, _optimizer

CHECKPOINT = "supernet.pt"


def _meta(net: ElasticMobileNet, dataset: str, cfg: TrainConfig, n_random: int) -> dict:
    return {
        "supernet": net.spec,
        "dataset": dataset,
        "recipe": cfg.model_dump(),
        "n_random": n_random,
    }


def train_supernet(
    net: ElasticMobileNet,
    data: Split,
    cfg: TrainConfig,
    *,
    dataset: str,
    checkpoint: Path,
    n_random: int = 2,
    seed: int = 0,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``net`` for ``cfg.epochs`` epochs (resuming from ``checkpoint`` when it exists);
    return ``{"epochs", "steps", "resumed_from", "seconds", "loss"}``."""
    meta = _meta(net, dataset, cfg, n_random)
    opt = _optimizer(net, cfg)
    per_epoch = -(-len(data) // cfg.batch_size)
    epochs = round(cfg.epochs)
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg.schedule, s, steps))
    start = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)  # our own run folder's file
        if state["meta"] != meta:
            diff = next(k for k in meta if state["meta"].get(k) != meta[k])
            raise NasError(
                f"{checkpoint} holds a supernet trained with another {diff} "
                f"({json.dumps(state['meta'].get(diff))[:80]}); delete it to retrain the "
                f"supernet for this experiment, or use the run folder it was trained in"
            )
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        start = state["epoch"]
    t0, loss_sum = time.perf_counter(), float("nan")
    for epoch in range(start, epochs):
        net.train()
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
        loss_sum, n = 0.0, 0
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            step = epoch * per_epoch + i // cfg.batch_size
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            loss_sum += sandwich_step(net, data.x[idx], data.y[idx], n_random, gen, opt)
            sched.step()
            n += 1
        loss_sum /= max(n, 1)
        _save(checkpoint, net, opt, sched, epoch + 1, meta)
        if announce is not None:
            announce(f"supernet epoch {epoch + 1}/{epochs}: loss {loss_sum:.4f}")
    net.set_active(net.largest())
    net.eval()
    return {
        "epochs": epochs,
        "steps": steps,
        "resumed_from": start,
        "seconds": time.perf_counter() - t0,
        "loss": loss_sum,
    }


def sandwich_step(
    net: ElasticMobileNet,
    x: torch.Tensor,
    y: torch.Tensor,
    n_random: int,
    gen: torch.Generator,
    opt: torch.optim.Optimizer,
) -> float:
    """One step of the sandwich rule; returns the largest sub-network's loss."""
    opt.zero_grad(set_to_none=True)
    net.set_active(net.largest())
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    soft = F.softmax(logits.detach(), dim=1)
    for config in [net.smallest()] + [net.sample(gen) for _ in range(n_random)]:
        net.set_active(config)
        student = F.log_softmax(net(x), dim=1)
        F.kl_div(student, soft, reduction="batchmean").backward()
    opt.step()
    return float(loss.detach())


def _save(path: Path, net: nn.Module, opt: Any, sched: Any, epoch: int, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "schedule": sched.state_dict(),
            "epoch": epoch,
            "meta": meta,
        },
        tmp,
    )
    os.replace(tmp, path)


@torch.no_grad()
def recalibrate_bn(net: nn.Module, x: torch.Tensor, batch_size: int = 128) -> None:
    """Re-estimate every BatchNorm's running statistics for the active sub-network from ``x``
    (a cumulative average over the batches), then leave the net in eval mode. Channels the
    sub-network does not use are reset: recalibrate again before scoring another one."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    net.train()
    for i in range(0, len(x), batch_size):
        net(x[i : i + batch_size])
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    net.eval()
