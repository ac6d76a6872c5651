"""Multi-objective multi-fidelity: report intermediate metrics, stop the hopeless early (MO-ASHA).

An ``evaluate(candidate, report)`` that takes a second argument gets a :class:`Reporter`; it calls
``report(budget, {"accuracy": ...})`` at increasing budgets (epochs, data fraction...). When a
report crosses a rung (``min_budget * eta**k``) the scheduler compares the trial with every trial
that reached the same rung, on all objectives at once: non-dominated sorting first, then each
point's hypervolume contribution within its front (Schmucker et al. 2021, "Multi-objective
asynchronous successive halving"). The trial goes on if it is among the best ``ceil(n / eta)``;
otherwise ``report`` raises :class:`Stopped` and the trial ends PRUNED with what it reached, counted
as an evaluation but never on the front.

Decisions read only the study, so workers in several processes (or a Ray cluster) share the rungs.
Static metrics (known before training) take part in the ranking with the reported ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import moocore
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.errors import NasError
from nas.front import _signs


class Stopped(Exception):
    """Raised by :class:`Reporter` when the scheduler stops the trial; let it propagate."""

    def __init__(self, budget: float, rung: float, reason: str) -> None:
        super().__init__(reason)
        self.budget = budget
        self.rung = rung
        self.reason = reason


@dataclass(frozen=True)
class MOASHA:
    """Asynchronous successive halving, ranking by Pareto rank then hypervolume contribution.

    Args:
        min_budget: the first rung; ``None`` takes the first budget a trial reports.
        eta: keep the best ``1/eta`` at each rung (3 is ASHA's default).
        max_budget: no rung at or above it (the full budget needs no decision).
    """

    min_budget: float | None = None
    eta: float = 3.0
    max_budget: float | None = None

    def __post_init__(self) -> None:
        if self.eta <= 1:
            raise NasError(f"MOASHA: eta must be > 1, got eta={self.eta}; use e.g. eta=3")
        if self.min_budget is not None and self.min_budget <= 0:
            raise NasError(f"MOASHA: min_budget must be > 0, got {self.min_budget}")

    def rungs_between(self, first: float, lo: float, hi: float) -> list[float]:
        """Rungs ``r`` with ``lo < r <= hi`` (``first`` is the first budget reported)."""
        r = self.min_budget if self.min_budget is not None else first
        out = []
        while r <= hi * (1 + 1e-9):
            if self.max_budget is not None and r >= self.max_budget * (1 - 1e-9):
                break
            if r > lo * (1 + 1e-9):
                out.append(r)
            r *= self.eta
        return out

    def promote(
        self,
        study: optuna.Study,
        number: int,
        rung: float,
        metrics: Mapping[str, float],
        directions: Mapping[str, str],
    ) -> tuple[bool, str]:
        """Whether trial ``number`` (``metrics`` at ``rung``) goes on; with a one-line reason."""
        others = [
            value_at(t, rung)
            for t in study.get_trials(deepcopy=False)
            if t.number != number and t.state != TrialState.WAITING
        ]
        rows = [m for m in others if m is not None] + [dict(metrics)]
        names = [n for n in directions if all(n in r for r in rows)]
        if not names:
            return True, "no objective reported yet"
        keep = math.ceil(len(rows) / self.eta)
        pos = rank_position(rows, {n: directions[n] for n in names})
        ok = pos < keep
        verb = "continues" if ok else "stopped"
        return ok, f"{verb} at budget {rung:g}: place {pos + 1} of {len(rows)}, best {keep} go on"


def value_at(t: FrozenTrial, rung: float) -> dict[str, float] | None:
    """A trial's metrics at ``rung`` (its first report at or past it), static metrics included."""
    for budget, metrics in t.user_attrs.get("curve") or ():
        if budget >= rung * (1 - 1e-9):
            return {**(t.user_attrs.get("static") or {}), **metrics}
    return None


def rank_position(rows: list[Mapping[str, float]], directions: Mapping[str, str]) -> int:
    """Place of the last row among ``rows``: Pareto rank, then hypervolume contribution."""
    y = np.array([[r[n] for n in directions] for r in rows], float) * _signs(directions)
    finite = np.all(np.isfinite(y), axis=1)
    if not finite[-1]:
        return len(rows) - 1
    y = y[finite]
    lo, hi = y.min(0), y.max(0)
    y = (y - lo) / np.where(hi > lo, hi - lo, 1.0)
    rank = moocore.pareto_rank(y)
    contrib = np.zeros(len(y))
    ref = np.full(y.shape[1], 1.1)
    for r in np.unique(rank):
        idx = np.flatnonzero(rank == r)
        contrib[idx] = moocore.hv_contributions(y[idx], ref=ref)
    me = len(y) - 1
    better = (rank < rank[me]) | ((rank == rank[me]) & (contrib > contrib[me]))
    return int(better.sum())


class Reporter:
    """What ``evaluate(candidate, report)`` calls: ``report(budget, metrics)``.

    Records the learning curve on the trial (``curve`` user attribute) and raises
    :class:`Stopped` when the scheduler stops the trial. Budgets must increase.
    """

    def __init__(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        directions: Mapping[str, str],
        scheduler: MOASHA | None,
    ) -> None:
        self._study, self._trial = study, trial
        self._directions = dict(directions)
        self._scheduler = scheduler
        self.curve: list[tuple[float, dict[str, float]]] = []

    @property
    def budget(self) -> float:
        """The last budget reported (0 before any report)."""
        return self.curve[-1][0] if self.curve else 0.0

    def __call__(self, budget: float, metrics: Mapping[str, Any]) -> None:
        try:
            b = float(budget)
        except (TypeError, ValueError):
            raise NasError(f"report: budget must be a number, got {budget!r}") from None
        if not math.isfinite(b) or b <= self.budget:
            raise NasError(
                f"report: budgets must increase, got {budget!r} after {self.budget:g}; "
                f"report at increasing epochs or data fractions"
            )
        values = {k: float(v) for k, v in metrics.items()}
        prev = self.budget
        first = self.curve[0][0] if self.curve else b
        self.curve.append((b, values))
        self._trial.set_user_attr("curve", [[x, m] for x, m in self.curve])
        if self._scheduler is None:
            return
        static = self._trial.user_attrs.get("static") or {}
        for rung in self._scheduler.rungs_between(first, prev, b):
            ok, why = self._scheduler.promote(
                self._study, self._trial.number, rung, {**static, **values}, self._directions
            )
            if not ok:
                raise Stopped(b, rung, why)
