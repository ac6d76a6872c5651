"""What a search driver needs from a problem: sample, cheap metrics, expensive evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna

from nas.config import Bound


class Rejected(Exception):
    """A candidate is not worth training (a hard constraint on a cheap metric is violated)."""

    def __init__(self, reason: str, metrics: Mapping[str, float]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics)


class Problem(Protocol):
    """One search problem. ``nas.pipeline.ExperimentProblem`` and ``nas.search`` implement it."""

    directions: Mapping[str, str]  # objective name -> "maximize" | "minimize", in study order
    constraints: Mapping[str, Bound]

    def sample(self, trial: optuna.Trial) -> Any: ...

    def static(self, candidate: Any) -> dict[str, float]: ...

    def evaluate(
        self,
        candidate: Any,
        trial: optuna.Trial,
        report: Callable[[float, Mapping[str, float]], None],
    ) -> dict[str, float]:
        """Train and measure; ``report(budget, metrics)`` feeds the multi-fidelity scheduler."""
        ...


SAMPLED = "sample_seconds"  # a trial's attribute, set once its candidate is drawn in full


def fully_drawn(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial's candidate was drawn in full: a trial lost before that trained nothing
    and holds partial params, so it is not retried."""
    return SAMPLED in trial.user_attrs


def violations(constraints: Mapping[str, Bound], metrics: Mapping[str, float]) -> dict[str, float]:
    """Constraint values in Optuna's convention (<= 0 is feasible) for the metrics present."""
    out: dict[str, float] = {}
    for name, b in constraints.items():
        if name not in metrics:
            continue
        v = float(metrics[name])
        worst = max(
            (v - b.max) if b.max is not None else float("-inf"),
            (b.min - v) if b.min is not None else float("-inf"),
        )
        out[name] = worst
    return out


def describe_violation(
    constraints: Mapping[str, Bound], metrics: Mapping[str, float]
) -> str | None:
    bad = [(n, v) for n, v in violations(constraints, metrics).items() if v > 0]
    if not bad:
        return None
    return "; ".join(
        f"{name}={metrics[name]:g} breaks {name} {describe_bound(constraints[name])}"
        for name, _ in bad
    )


def describe_bound(b: Bound) -> str:
    """``>= 0.9``, ``<= 2e+06`` or both, joined by ``and``."""
    rules = (
        f">= {b.min:g}" if b.min is not None else "",
        f"<= {b.max:g}" if b.max is not None else "",
    )
    return " and ".join(r for r in rules if r)


@dataclass(frozen=True)
class Point:
    """A trial on the front: ``params`` (what the space sampled), ``metrics``, ``number``."""

    number: int
    params: dict[str, Any]
    metrics: dict[str, float]
    compression: dict[str, Any] = field(default_factory=dict)  # technique -> knobs applied
