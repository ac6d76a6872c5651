"""The Technique contract: a name, the knobs it samples, optional training hooks, ``apply``.

A technique's YAML entry gives ranges for its knobs (``ratio: [0.0, 0.7]`` is a range, ``{choices:
[4, 8]}`` a categorical, a scalar a fixed value) and the reserved keys ``per_layer`` (sample the
per-layer knob once per eligible layer), ``optional`` (the search may also leave the technique out)
and ``finetune`` (epochs of fine-tuning after it is applied). ``nas techniques`` lists them all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import optuna
import torch
from torch import nn

from nas.errors import NasError

# What a technique hands the training loop (the pipeline passes these to nas.train; techniques
# never import it): a regulariser added to the loss, computed from the model ...
LossHook = Callable[[nn.Module], torch.Tensor]
# ... and a replacement of cross-entropy: (logits, targets, indices of the batch in the training
# split) -> loss (distillation)
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

RESERVED = ("per_layer", "optional", "finetune")


@dataclass(frozen=True)
class Knob:
    """One knob: its type, the domain it must lie in, and a default search range."""

    name: str
    # choice: one of ``options`` (strings); text: a fixed string setting, never searched
    kind: Literal["float", "int", "choice", "text"]
    domain: tuple[float, float]
    default: tuple[Any, ...]  # a (low, high) range; for a choice knob the options searched
    open_low: bool = False  # domain excludes its low end (e.g. rank > 0)
    open_high: bool = False  # domain excludes its high end (e.g. ratio < 1)
    log: bool = False
    help: str = ""
    options: tuple[str, ...] = ()
    outside: str = ""  # added to the error for a value outside the domain (what to write instead)

    def describe_domain(self) -> str:
        if self.kind == "text":
            return "a string"
        if self.kind == "choice":
            return "{" + ", ".join(self.options) + "}"
        lo, hi = self.domain
        return f"{'(' if self.open_low else '['}{lo:g}, {hi:g}{')' if self.open_high else ']'}"

    def inside(self, v: Any) -> bool:
        if self.kind == "text":
            return isinstance(v, str) and bool(v)
        if self.kind == "choice":
            return v in self.options
        lo, hi = self.domain
        return (lo < v if self.open_low else lo <= v) and (v < hi if self.open_high else v <= hi)


def fraction_knob(name: str, help: str, default: tuple[float, float] = (0.0, 0.7)) -> Knob:
    """A fraction removed, in [0, 1) (e.g. pruning ratios)."""
    return Knob(name, "float", (0.0, 1.0), default, open_high=True, help=help)


def rank_knob(help: str) -> Knob:
    """A rank as a ratio in (0, 1] of the layer's full rank (factorizations, decompositions)."""
    return Knob("rank", "float", (0.0, 1.0), (0.25, 1.0), open_low=True, help=help)


def criterion_knob(options: tuple[str, ...], help: str) -> Knob:
    """The importance criterion of a pruning technique: one of ``options`` (a list searches)."""
    return Knob("criterion", "choice", (0.0, 0.0), (options[0],), options=options, help=help)


def round_to_knob(what: str) -> Knob:
    """The shared ``round_to`` knob of structural techniques (fixed at 8 unless the YAML says).

    onnxruntime runs convolutions in channel blocks (8 or 16 wide); a model with odd channel
    counts can be slower than the larger original (benchmarks/results/compression.md).
    """
    return Knob(
        "round_to",
        "int",
        (1, 64),
        (8, 8),
        help=f"{what} rounded up to a multiple (fast blocked kernels; 16 on AVX-512)",
    )


@dataclass(frozen=True)
class KnobRange:
    """What the experiment asks for one knob: a range, choices, or a fixed value."""

    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def fixed(self) -> Any:
        if self.choices is not None and len(self.choices) == 1:
            return self.choices[0]
        if self.low is not None and self.low == self.high:
            return self.low
        return None


@dataclass(frozen=True)
class Settings:
    """A technique's parsed experiment entry."""

    technique: str
    knobs: dict[str, KnobRange]
    per_layer: bool = False
    optional: bool = False
    finetune: float = 0.0


@dataclass
class Context:
    """What ``apply`` may use: shapes, the training data (calibration), the fine-tune budget."""

    input_shape: tuple[int, ...]
    calib_x: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    calib_y: torch.Tensor | None = None  # labels of calib_x (e.g. for gradient criteria)
    # the model's channels are already in importance order, leading ones first (a weight-sharing
    # supernet's sub-network: every smaller sub-network trains the leading channels); techniques
    # that rank channels by a trained score (slimming's |gamma|) keep the leading ones instead
    leading_channels: bool = False


class Technique:
    """Base class. ``nas/compress/lowrank.py`` is the smallest complete example to copy."""

    name: ClassVar[str]
    description: ClassVar[str]
    knobs: ClassVar[tuple[Knob, ...]]
    per_layer_knob: ClassVar[str | None] = None  # the knob ``per_layer: true`` samples per layer
    exports: ClassVar[str] = ""
    no_eligible_layer: ClassVar[str | None] = None  # the reason given when eligible() is empty
    min_finetune: ClassVar[float] = 0.0  # epochs the pipeline fine-tunes at least after apply
    # a training option (e.g. distillation): it changes how the model is trained, not the model,
    # so the pipeline neither applies nor fine-tunes for it and it is not in the compression record
    training_only: ClassVar[bool] = False

    # ---- configuration -------------------------------------------------------------------
    def parse(self, raw: Mapping[str, Any] | None) -> Settings:
        """Validate the experiment's entry; every error names technique, key, value and fix."""
        raw = dict(raw or {})
        by_name = {k.name: k for k in self.knobs}
        unknown = [k for k in raw if k not in by_name and k not in RESERVED]
        if unknown:
            raise NasError(
                f"compression.{self.name}: unknown key {unknown[0]!r}; valid keys: "
                f"{', '.join([*by_name, *RESERVED])}"
            )
        ranges = {
            k.name: self._parse_knob(
                k, raw.get(k.name, k.default[0] if k.kind == "text" else list(k.default))
            )
            for k in self.knobs
        }
        per_layer = bool(raw.get("per_layer", False))
        if per_layer and self.per_layer_knob is None:
            raise NasError(
                f"compression.{self.name}: per_layer is not supported by this technique; remove it"
            )
        finetune = raw.get("finetune", 0.0)
        if not isinstance(finetune, int | float) or finetune < 0:
            raise NasError(
                f"compression.{self.name}.finetune must be a number of epochs >= 0, "
                f"got {finetune!r}"
            )
        return Settings(
            self.name, ranges, per_layer, bool(raw.get("optional", False)), float(finetune)
        )

    def _parse_knob(self, knob: Knob, value: Any) -> KnobRange:
        where = f"compression.{self.name}.{knob.name}"
        fix = f"use values in {knob.describe_domain()}"
        if knob.kind == "text":
            if not knob.inside(value):
                raise NasError(f"{where}: {value!r} is not a string; write e.g. {knob.default[0]}")
            return KnobRange(choices=(value,))
        if knob.kind == "choice":
            if isinstance(value, Mapping) and set(value) == {"choices"}:
                value = value["choices"]
            many = isinstance(value, Sequence) and not isinstance(value, str)
            values = list(value) if many else [value]
            bad = [v for v in values if not knob.inside(v)] or ([] if values else [value])
            if bad:
                raise NasError(
                    f"{where}: {bad[0]!r} is not one of {knob.describe_domain()}; pick from "
                    f"them (a list searches several)"
                )
            return KnobRange(choices=tuple(values))
        if isinstance(value, Mapping) and set(value) == {"choices"}:
            values = list(value["choices"])
            rng = KnobRange(choices=tuple(values))
        elif isinstance(value, Sequence) and not isinstance(value, str):
            values = list(value)
            if len(values) != 2:
                raise NasError(
                    f"{where}: a range is [low, high], got {value!r}; for a list of "
                    f"values write {{choices: {value!r}}}"
                )
            rng = KnobRange(low=values[0], high=values[1])
        else:
            values = [value]
            rng = KnobRange(choices=(value,))
        for v in values:
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise NasError(f"{where}: {v!r} is not a number; {fix}")
            if knob.kind == "int" and float(v) != int(v):
                raise NasError(f"{where}: {v!r} must be a whole number; {fix}")
            if not knob.inside(float(v)):
                hint = f"; {knob.outside}" if knob.outside else ""
                raise NasError(f"{where}: {v!r} is outside {knob.describe_domain()}; {fix}{hint}")
        if rng.low is not None and rng.high is not None and rng.low > rng.high:
            raise NasError(
                f"{where}: low <= high must hold, but got (low={rng.low}, "
                f"high={rng.high}); swap them"
            )
        return rng

    # ---- per candidate ---------------------------------------------------------------------
    def eligible(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        """Layers the per-layer knob is sampled for (and that ``apply`` may change)."""
        return []

    def not_applicable(self, model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
        """Why this technique cannot apply to ``model`` (``None`` when it can).

        By default: ``no_eligible_layer`` when ``eligible`` finds no layer to act on, after the
        model's class name. One line, naming the layer or the model it cannot handle.
        """
        if self.no_eligible_layer is not None and not self.eligible(model, input_shape):
            return f"{type(model).__name__}: {self.no_eligible_layer}"
        return None

    def sample(
        self,
        trial: optuna.trial.BaseTrial,
        settings: Settings,
        model: nn.Module,
        input_shape: tuple[int, ...],
    ) -> dict[str, Any] | None:
        """Sample this technique's knobs (define-by-run); ``None`` when ``optional`` and off."""
        if settings.optional and not trial.suggest_categorical(f"{self.name}.use", [True, False]):
            return None
        knobs: dict[str, Any] = {}
        for k in self.knobs:
            rng = settings.knobs[k.name]
            if settings.per_layer and k.name == self.per_layer_knob:
                layers = self.eligible(model, input_shape)
                knobs[k.name] = {
                    layer: _suggest(trial, f"{self.name}.{k.name}.{layer}", k, rng)
                    for layer in layers
                }
            else:
                knobs[k.name] = _suggest(trial, f"{self.name}.{k.name}", k, rng)
        return knobs

    def loss_hooks(self, knobs: Mapping[str, Any], ctx: Context) -> list[LossHook]:
        """Regularisers added to the training loss (e.g. slimming's BN-gamma L1)."""
        return []

    def step_hooks(
        self, knobs: Mapping[str, Any], model: nn.Module, ctx: Context
    ) -> list[Callable[[int, int], None]]:
        """Called after each optimizer step of the main training with ``(step, steps)``
        (e.g. gradual pruning raising the sparsity along training)."""
        return []

    def criterion(self, knobs: Mapping[str, Any], ctx: Context) -> Criterion | None:
        """A training loss replacing cross-entropy (e.g. distillation), or ``None``."""
        return None

    def apply(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """Return the transformed model (a new object; structural techniques shrink it)."""
        raise NotImplementedError

    def estimate(self, model: nn.Module, knobs: Mapping[str, Any], ctx: Context) -> nn.Module:
        """The model's shape as it will be exported, before training (for cheap metrics).

        Exact for techniques whose structure depends only on the knobs (the default: ``apply`` on
        a copy); an estimate where it depends on trained weights (slimming).
        """
        return self.apply(copy.deepcopy(model), knobs, ctx)


def _suggest(trial: optuna.trial.BaseTrial, name: str, knob: Knob, rng: KnobRange) -> Any:
    if rng.fixed is not None:
        if knob.kind in ("choice", "text"):
            return rng.fixed
        return int(rng.fixed) if knob.kind == "int" else float(rng.fixed)
    if rng.choices is not None:
        return trial.suggest_categorical(name, list(rng.choices))
    assert rng.low is not None and rng.high is not None
    if knob.kind == "int":
        return trial.suggest_int(name, int(rng.low), int(rng.high), log=knob.log)
    return trial.suggest_float(name, float(rng.low), float(rng.high), log=knob.log)
