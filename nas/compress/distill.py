"""``distill``: knowledge distillation (Hinton et al. 2015) as a training option.

The candidate trains on ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) +
(1 - alpha) * CE(student, labels)``; knobs ``temperature`` (T) and ``alpha`` are searched like any
other. ``teacher``: ``largest`` (the space's largest model, trained once per run) or a trained
model file / run folder (:mod:`nas.teacher`). The teacher's logits on the training split are
computed once per run and cached in the run folder; the fine-tune after compression distills too.
It changes how a model is trained, not the model: nothing of it is exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.compress._base import Context, Criterion, Knob, Technique

TEACHER_LOGITS = "teacher_logits"  # Context.extra key: the teacher's logits on the train split


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha T^2 KL(p_teacher^T || p_student^T) + (1 - alpha) CE`` (batch mean)."""
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * soft + (1.0 - alpha) * F.cross_entropy(student, targets)


class Distill(Technique):
    name = "distill"
    description = "knowledge distillation from a teacher (training option: soft targets + CE)"
    knobs = (
        Knob("temperature", "float", (1.0, 50.0), (1.0, 8.0), help="softmax temperature T"),
        Knob("alpha", "float", (0.0, 1.0), (0.3, 0.9), help="weight of the soft-target loss"),
        Knob(
            "teacher",
            "text",
            (0.0, 0.0),
            ("largest",),
            help="largest (the space's largest model, trained once) or a model file / run folder",
        ),
    )
    exports = "nothing of its own (it trains the candidate)"
    training_only = True

    def criterion(self, knobs: Mapping[str, Any], ctx: Context) -> Criterion:
        logits = ctx.extra[TEACHER_LOGITS]
        t, a = float(knobs["temperature"]), float(knobs["alpha"])

        def loss(student: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return distillation_loss(student, logits[idx].to(student.device), targets, t, a)

        return loss

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return model

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        return model
