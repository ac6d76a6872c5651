"""The ``auto`` sampler's own part: what to train first, and instead of a rejected pick.

Training is the expensive part of a trial; a candidate's static metrics (FLOPs, params, size...)
are known from its structure. :class:`Proposer` uses that where it measurably helps and leaves
the rest to an Optuna sampler (the ``fallback`` of :class:`ProposedSampler`, see
``nas.search._samplers``):

1. the first ``n_init`` trials: a uniform draw of the space that was never tried and whose static
   metrics meet every hard constraint (the space is run on throwaway :class:`ProposalTrial` objects,
   so a rejected draw costs no training and no trial);
2. after that a fallback Optuna sampler picks (``stats.mode`` names it): which one depends on
   the budget and on whether an objective is a static metric (see ``nas.search._samplers``);
3. when the fallback's last pick was rejected untrained (a duplicate, a static-constraint
   violation, or the space itself refused it), the next trial is the untried feasible candidate
   nearest to that pick (small mutations of it), so the fallback's intent is kept and the
   trial is not spent on a point it cannot learn from.

An earlier version ranked candidates by a home-made Gaussian-process expected hypervolume gain
with the static metrics known exactly; on the published benchmarks of
``benchmarks/search_efficiency.py`` Optuna's GP sampler reached more hypervolume on every
problem it was run on, so that surrogate was removed (see the README's search section).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from nas.config import Bound
from nas.search._problem import Rejected, describe_violation


def params_key(params: Mapping[str, Any]) -> str:
    """A stable identity for a candidate: the hash of its canonical (sorted, JSON) params."""
    text = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# distributions <-> the unit interval
# ---------------------------------------------------------------------------------------------


def _to_unit(dist: BaseDistribution, value: Any) -> float:
    """Numeric value -> [0, 1] (log scale where the distribution is log)."""
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi, v = float(dist.low), float(dist.high), float(value)
    if hi <= lo:
        return 0.0
    if dist.log:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def _from_unit(dist: BaseDistribution, u: float) -> Any:
    assert isinstance(dist, FloatDistribution | IntDistribution)
    u = min(max(u, 0.0), 1.0)
    lo, hi = float(dist.low), float(dist.high)
    if isinstance(dist, IntDistribution):
        if dist.log:  # widen by half a unit so the end values are as likely as the others
            a, b = math.log(lo - 0.5 + 1e-9 if lo > 0.5 else lo), math.log(hi + 0.5)
            v = round(math.exp(a + u * (b - a)))
        else:
            n = (int(hi) - int(lo)) // dist.step
            v = int(lo) + min(int(u * (n + 1)), n) * dist.step
        return int(min(max(v, int(lo)), int(hi)))
    if dist.log:
        v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        v = lo + u * (hi - lo)
        if dist.step is not None:
            v = lo + round((v - lo) / dist.step) * dist.step
    return float(min(max(v, lo), hi))


class ProposalTrial(optuna.trial.BaseTrial):
    """A throwaway trial that samples its own values: uniformly, or near a parent's params.

    With a ``parent``, each of the parent's params is kept unless it is among the ``mutate`` names,
    which get a Gaussian step (in the unit interval, log scale where the space is log) or another
    category; params the parent never had are drawn uniformly.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        parent: Mapping[str, Any] | None = None,
        mutate: Sequence[str] = (),
        scale: float = 0.15,
    ) -> None:
        self._rng = rng
        self._parent = dict(parent or {})
        self._mutate = set(mutate)
        self._scale = scale
        self._params: dict[str, Any] = {}
        self._dists: dict[str, BaseDistribution] = {}
        self._user_attrs: dict[str, Any] = {}
        self._constraints: dict[str, float] = {}

    def _draw(self, name: str, dist: BaseDistribution) -> Any:
        if name in self._params:
            return self._params[name]
        parent = self._parent.get(name, None)
        has_parent = name in self._parent and dist._contains(dist.to_internal_repr(parent))
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if has_parent and name not in self._mutate:
                value = parent
            elif has_parent and len(choices) > 1:
                others = [c for c in choices if c != parent]
                value = others[int(self._rng.integers(len(others)))]
            else:
                value = choices[int(self._rng.integers(len(choices)))]
        elif has_parent and name not in self._mutate:
            value = parent
        elif has_parent:
            u = _to_unit(dist, parent) + self._rng.normal(0.0, self._scale)
            value = _from_unit(dist, float(u))
            if value == parent and isinstance(dist, IntDistribution) and dist.high > dist.low:
                step = dist.step if not dist.log else 1
                up = parent + step if parent + step <= dist.high else parent - step
                down = parent - step if parent - step >= dist.low else parent + step
                value = up if u >= _to_unit(dist, parent) else down
        else:
            value = _from_unit(dist, float(self._rng.random()))
        self._params[name] = value
        self._dists[name] = dist
        return value

    def suggest_float(
        self,
        name: str,
        low: float,
        high: float,
        *,
        step: float | None = None,
        log: bool = False,
    ) -> float:
        return self._draw(name, FloatDistribution(low, high, step=step, log=log))

    def suggest_uniform(self, name: str, low: float, high: float) -> float:
        return self.suggest_float(name, low, high)

    def suggest_loguniform(self, name: str, low: float, high: float) -> float:
        return self.suggest_float(name, low, high, log=True)

    def suggest_discrete_uniform(self, name: str, low: float, high: float, q: float) -> float:
        return self.suggest_float(name, low, high, step=q)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._draw(name, IntDistribution(low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:  # type: ignore[override]
        return self._draw(name, CategoricalDistribution(choices))

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self._user_attrs[key] = value

    def set_constraint(self, key: str, value: float) -> None:
        self._constraints[key] = value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return dict(self._dists)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return dict(self._user_attrs)

    @property
    def datetime_start(self) -> datetime | None:
        return None

    @property
    def number(self) -> int:
        return -1

    @property
    def constraints(self) -> dict[str, float]:
        return dict(self._constraints)


class ProposedSampler(optuna.samplers.RandomSampler):
    """Answers the real trial's ``suggest`` calls from the chosen proposal; when there is none,
    from the fallback sampler named by :attr:`mode` (random sampling without one).

    One process runs one trial at a time, so :attr:`chosen` and :attr:`mode` are simply the
    current plan.
    """

    def __init__(
        self,
        seed: int | None = None,
        fallbacks: Mapping[str, optuna.samplers.BaseSampler] | None = None,
    ) -> None:
        super().__init__(seed=seed)
        self.chosen: dict[str, Any] = {}
        self.fallbacks = dict(fallbacks or {})
        self.mode = next(iter(self.fallbacks), "")

    @property
    def fallback(self) -> optuna.samplers.BaseSampler | None:
        """The sampler answering now (None while a proposal is being answered)."""
        return None if self.chosen else self.fallbacks.get(self.mode)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        fallback = self.fallback
        return fallback.infer_relative_search_space(study, trial) if fallback else {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        fallback = self.fallback
        return (
            fallback.sample_relative(study, trial, search_space)
            if fallback and search_space
            else {}
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        for sampler in self.fallbacks.values():
            sampler.before_trial(study, trial)
        super().before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        for sampler in self.fallbacks.values():
            sampler.after_trial(study, trial, state, values)
        super().after_trial(study, trial, state, values)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name in self.chosen:
            value = self.chosen[param_name]
            if param_distribution._contains(param_distribution.to_internal_repr(value)):
                return value
        fallback = self.fallback
        if fallback is not None:
            return fallback.sample_independent(study, trial, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)


# ---------------------------------------------------------------------------------------------
# the proposer
# ---------------------------------------------------------------------------------------------


@dataclass
class Proposal:
    params: dict[str, Any]
    dists: dict[str, BaseDistribution]


@dataclass
class ProposalStats:
    """What the last proposal round saw (logged on the trial for inspection)."""

    drawn: int = 0
    duplicate: int = 0
    infeasible: int = 0
    failed: int = 0
    mode: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class History:
    """The study as the proposer reads it."""

    complete: list[FrozenTrial]
    seen: set[str]  # params keys of every trial but the WAITING ones
    # params of the latest finished trial when it was rejected untrained, else None
    rejected: dict[str, Any] | None = None


def read_history(study: optuna.Study) -> History:
    complete, seen = [], set()
    last: FrozenTrial | None = None
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        if t.params:
            seen.add(params_key(t.params))
        if t.state == TrialState.COMPLETE:
            complete.append(t)
        if t.state.is_finished() and (last is None or t.number > last.number):
            last = t
    rejected = None
    if last is not None and last.state == TrialState.PRUNED and "rejected" in last.user_attrs:
        rejected = dict(last.params)
    return History(complete, seen, rejected)


def _static(t: FrozenTrial) -> dict[str, float]:
    return dict(t.user_attrs.get("static") or {})


def distance(a: Mapping[str, Any], b: Mapping[str, Any], dists: Mapping[str, Any]) -> float:
    """How far apart two candidates are: 1 per differing (or missing) categorical, the distance
    in the unit interval (log scale where the space is log) per numeric parameter."""
    d = 0.0
    for name in set(a) | set(b):
        dist = dists.get(name)
        if name not in a or name not in b or dist is None:
            d += 1.0
        elif isinstance(dist, CategoricalDistribution):
            d += float(a[name] != b[name])
        else:
            d += abs(_to_unit(dist, a[name]) - _to_unit(dist, b[name]))
    return d


@dataclass
class Proposer:
    """Chooses the candidates ``auto`` trains itself (see the module docstring).

    Args:
        directions: objective -> "maximize" | "minimize".
        constraints: hard bounds; a static metric that breaks one rejects the candidate untrained.
        modes: after the random start, the mode (the fallback sampler's name) of searches where
            no objective is a static metric, and of those where one is.
        n_init: complete trials sampled by the proposer before the fallback sampler takes over.
        max_proposals: candidates drawn per round (fewer if ``time_budget`` runs out first).
        time_budget: seconds per proposal round, after at least ``min_proposals``; None (the
            default) draws them all, so a seeded search is reproducible on any machine (static
            metrics that take long, e.g. a big model's FLOPs count, make rounds smaller).
    """

    directions: Mapping[str, str]
    constraints: Mapping[str, Bound]
    # the fallback's name when no objective is known before training, and when one is
    modes: tuple[str, str] = ("fallback", "fallback")
    seed: int | None = 0
    n_init: int = 8
    max_proposals: int = 64
    min_proposals: int = 8
    time_budget: float | None = None
    rng: np.random.Generator = field(init=False)
    stats: ProposalStats = field(init=False, default_factory=ProposalStats)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _draw(
        self,
        sample: Callable[[optuna.trial.BaseTrial], Any],
        static: Callable[[Any], dict[str, float]],
        seen: set[str],
        *,
        n: int,
        parent: Mapping[str, Any] | None,
        deadline: float,
    ) -> list[Proposal]:
        """Up to ``n`` untried candidates that meet the static constraints: uniform draws, or
        (with a ``parent``) mostly small mutations of it."""
        st = self.stats
        out: list[Proposal] = []
        attempts = 0
        while attempts < 4 * max(n, 16) and len(out) < n:  # duplicates: 64 tries at least
            now = time.perf_counter()
            if now > deadline and (
                len(out) >= min(n, self.min_proposals)
                or (out and now > deadline + 2 * (self.time_budget or 0.0))
            ):
                break  # a real network's static metrics take a second, not milliseconds
            attempts += 1
            if parent and self.rng.random() < 0.75:
                names = list(parent)
                rate = float(self.rng.choice([1.0 / max(len(names), 1), 0.3]))
                mutate = [k for k in names if self.rng.random() < rate] or [
                    names[int(self.rng.integers(len(names)))]
                ]
                scale = float(self.rng.choice((0.02, 0.05, 0.15)))
                trial = ProposalTrial(self.rng, parent=parent, mutate=mutate, scale=scale)
            else:
                trial = ProposalTrial(self.rng)
            st.drawn += 1
            try:
                candidate = sample(trial)
            except Rejected:
                st.infeasible += 1
                continue
            except Exception:
                st.failed += 1
                continue
            key = params_key(trial.params)
            if key in seen:
                st.duplicate += 1
                continue
            seen.add(key)
            try:
                metrics = static(candidate)
            except Exception:
                st.failed += 1
                continue
            if describe_violation(self.constraints, metrics) is not None:
                st.infeasible += 1
                continue
            out.append(Proposal(trial.params, trial.distributions))
        return out

    def propose(
        self,
        history: History,
        sample: Callable[[optuna.trial.BaseTrial], Any],
        static: Callable[[Any], dict[str, float]],
    ) -> Proposal | None:
        """The candidate to train next; None when a fallback sampler picks (``stats.mode``
        names it) or when no new feasible candidate was found.

        ``stats`` says which and why (all duplicates: the space is probably exhausted).
        """
        self.stats = st = ProposalStats()
        t0 = time.perf_counter()
        deadline = t0 + self.time_budget if self.time_budget is not None else math.inf
        warm = len(history.complete) >= self.n_init
        if warm and history.rejected is None:
            known = any(n in _static(t) for t in history.complete for n in self.directions)
            st.mode = self.modes[known]
            st.seconds = time.perf_counter() - t0
            return None
        parent = history.rejected if warm else None
        props = self._draw(
            sample, static, set(history.seen), n=self.max_proposals, parent=parent,
            deadline=deadline,
        )  # fmt: skip
        chosen = None
        if props and parent is not None:
            st.mode = "nearest"
            dists: dict[str, BaseDistribution] = {}
            for p in props:
                dists.update(p.dists)
            d = np.array([distance(p.params, parent, dists) for p in props])
            best = np.flatnonzero(d <= d.min() + 1e-12)
            chosen = props[int(self.rng.choice(best))]
        elif props:
            st.mode = "random"
            chosen = props[int(self.rng.integers(len(props)))]
        st.seconds = time.perf_counter() - t0
        return chosen
