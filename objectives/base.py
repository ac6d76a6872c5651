"""The Objective contract: a name, a direction, whether it needs training, ``measure``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from nas.data import Split

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class MeasureContext:
    """What a measurement may use.

    ``split`` is the evaluation split: val during the search, test at export. ``args`` are this
    objective's arguments from the experiment (e.g. ``latency_ms: {args: {batch_size: 64}}``).
    ``onnx`` is the deployed model when it differs from the torch model's plain export (a real int8
    model): objectives that run the model (accuracy, latency) run that one in onnxruntime.
    """

    input_shape: tuple[int, ...]
    split: Split | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    onnx: bytes | None = None


class Objective:
    """Base class; see ``objectives/params.py`` for the smallest example to copy.

    Cheap objectives (``needs_training = False``) are measured before training, so a hard
    constraint on them rejects a candidate without training it.
    """

    name: ClassVar[str]
    direction: ClassVar[Direction]
    needs_training: ClassVar[bool]
    unit: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def measure(self, model: nn.Module, ctx: MeasureContext) -> float:
        raise NotImplementedError

    def check(self, args: Mapping[str, Any]) -> None:
        """Refuse args this machine cannot honour (NasError), before any run folder is made."""

    def measured_on(self, args: Mapping[str, Any]) -> str | None:
        """Where the value comes from (recorded per trial), for hardware-dependent metrics."""
        return None
