"""Sampler choice, including ``auto``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import optuna

from nas.config import Bound
from nas.errors import NasError

if TYPE_CHECKING:
    from nas.search._proposal import CostAwareProposer

SAMPLERS = ("auto", "tpe", "nsga2", "nsga3", "random", "gp")


def choose_sampler(name: str, *, n_objectives: int, n_trials: int, workers: int) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete sampler name; return ``(name, why)``."""
    if name != "auto":
        return name, "chosen in the experiment"
    if n_trials >= 1000:
        if n_objectives >= 4:
            return "nsga3", f"{n_trials} trials and {n_objectives} objectives: NSGA-III scales best"
        return "nsga2", f"{n_trials} trials: a genetic algorithm is cheapest per trial at that size"
    why = (
        f"{n_trials} trials, {n_objectives} objective(s): each trial trains the candidate, among "
        f"many drawn, with the largest expected hypervolume gain given its static metrics "
        f"(Gaussian-process surrogate); duplicates and static-constraint violations are not "
        f"trained"
    )
    why += (
        "; when no objective is known before training, multivariate TPE picks after the random "
        "start (duplicates still skipped)"
    )
    if workers > 1:
        why += f"; running trials count at their predicted values ({workers} parallel workers)"
    return "cost-aware", why


def make_sampler(
    name: str,
    *,
    n_objectives: int,
    n_trials: int,
    workers: int,
    seed: int | None,
) -> tuple[optuna.samplers.BaseSampler, str]:
    """Build the sampler; return it with a one-line explanation of the choice.

    Constraints reach every sampler through the trials themselves (``trial.set_constraint``).
    """
    if name not in SAMPLERS:
        raise NasError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    resolved, why = choose_sampler(
        name, n_objectives=n_objectives, n_trials=n_trials, workers=workers
    )
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    s = optuna.samplers
    if resolved == "cost-aware":
        from nas.search._proposal import ProposedSampler

        # the fallback answers trials the proposal declines: those of searches where no
        # objective is known before training (see CostAwareProposer.decline_without_static)
        fallback = _multivariate_tpe(seed, n_trials, workers)
        sampler: s.BaseSampler = ProposedSampler(seed=seed, fallback=fallback)
    elif resolved == "tpe":
        sampler = _multivariate_tpe(seed, n_trials, workers)
    elif resolved == "nsga2":
        sampler = s.NSGAIISampler(seed=seed, population_size=min(50, max(4, n_trials // 10)))
    elif resolved == "nsga3":
        sampler = s.NSGAIIISampler(seed=seed, population_size=min(50, max(4, n_trials // 10)))
    elif resolved == "gp":
        sampler = s.GPSampler(seed=seed, warn_independent_sampling=False)
    else:
        sampler = s.RandomSampler(seed=seed)
    return sampler, f"sampler {resolved} ({why})"


def _multivariate_tpe(seed: int | None, n_trials: int, workers: int) -> optuna.samplers.TPESampler:
    """``tpe``, and ``auto``'s fallback: multivariate, grouped, with the constant liar for
    parallel workers."""
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=True,
        constant_liar=workers > 1,
        n_startup_trials=max(3, min(10, n_trials // 4)),
    )


def make_proposer(
    sampler: optuna.samplers.BaseSampler,
    *,
    directions: Mapping[str, str],
    constraints: Mapping[str, Bound],
    n_trials: int,
    seed: int | None,
    time_budget: float | None = None,
) -> CostAwareProposer | None:
    """The cost-aware proposer that goes with ``sampler`` (None for Optuna's own samplers).

    ``time_budget`` caps the seconds of one proposal round (None: reproducible, no cap).
    """
    from nas.search._proposal import CostAwareProposer, ProposedSampler

    if not isinstance(sampler, ProposedSampler):
        return None
    return CostAwareProposer(
        directions,
        constraints,
        seed=seed,
        n_init=max(5, min(10, n_trials // 10)),
        time_budget=time_budget,
        decline_without_static=sampler.fallback is not None,
    )
