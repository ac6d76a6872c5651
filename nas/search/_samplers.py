"""Sampler choice, including ``auto``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import optuna

from nas.config import Bound
from nas.errors import NasError

if TYPE_CHECKING:
    from nas.search._proposal import Proposer

SAMPLERS = ("auto", "tpe", "nsga2", "nsga3", "random", "gp")


GP_MAX_TRIALS = 500  # auto: Optuna's GP picks below this many trials, multivariate TPE from it


def choose_sampler(name: str, *, n_objectives: int, n_trials: int, workers: int) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete sampler name; return ``(name, why)``."""
    if name != "auto":
        return name, "chosen in the experiment"
    if n_trials >= 1000:
        if n_objectives >= 4:
            return "nsga3", f"{n_trials} trials and {n_objectives} objectives: NSGA-III scales best"
        return "nsga2", f"{n_trials} trials: a genetic algorithm is cheapest per trial at that size"
    start = "untried random candidates that meet the static constraints first, then "
    tail = (
        "; duplicates and static-constraint violations are not trained (the untried feasible "
        "candidate nearest to such a pick is trained instead)"
    )
    if workers > 1:
        tail += f"; running trials count as pending ({workers} parallel workers)"
    if n_trials < GP_MAX_TRIALS:
        return "auto:gp", (
            f"{n_trials} trials, {n_objectives} objective(s): {start}Optuna's Gaussian-process "
            f"sampler (the most hypervolume per evaluation on the published benchmarks){tail}"
        )
    return "auto:tpe", (
        f"{n_trials} trials, {n_objectives} objective(s): {start}multivariate TPE (a Gaussian "
        f"process gets slow past {GP_MAX_TRIALS} trials){tail}"
    )


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
    if resolved.startswith("auto:"):
        from nas.search._proposal import ProposedSampler

        # the fallbacks answer the trials the proposer leaves to them (see _proposal.Proposer)
        fallbacks: dict[str, s.BaseSampler] = {"tpe": _multivariate_tpe(seed, n_trials, workers)}
        if resolved == "auto:gp":
            fallbacks["gp"] = _gp(seed, n_startup=0)
        sampler: s.BaseSampler = ProposedSampler(seed=seed, fallbacks=fallbacks)
    elif resolved == "tpe":
        sampler = _multivariate_tpe(seed, n_trials, workers)
    elif resolved == "nsga2":
        sampler = s.NSGAIISampler(seed=seed, population_size=min(50, max(4, n_trials // 10)))
    elif resolved == "nsga3":
        sampler = s.NSGAIIISampler(seed=seed, population_size=min(50, max(4, n_trials // 10)))
    elif resolved == "gp":
        sampler = _gp(seed)
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


def _gp(seed: int | None, n_startup: int = 10) -> optuna.samplers.GPSampler:
    """``gp``, and ``auto``'s fallback below ``GP_MAX_TRIALS`` (whose proposer does the random
    start: ``n_startup=0``). Categorical parameters get the GP's categorical kernel."""
    return optuna.samplers.GPSampler(
        seed=seed,
        n_startup_trials=n_startup,
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        warn_independent_sampling=False,
    )


def make_proposer(
    sampler: optuna.samplers.BaseSampler,
    *,
    directions: Mapping[str, str],
    constraints: Mapping[str, Bound],
    n_trials: int,
    seed: int | None,
    time_budget: float | None = None,
) -> Proposer | None:
    """The proposer that goes with ``sampler`` (None for Optuna's own samplers).

    ``time_budget`` caps the seconds of one proposal round (None: reproducible, no cap).
    """
    from nas.search._proposal import ProposedSampler, Proposer

    if not isinstance(sampler, ProposedSampler):
        return None
    modes = ("tpe", "gp" if "gp" in sampler.fallbacks else "tpe")
    return Proposer(
        directions,
        constraints,
        modes=modes,
        seed=seed,
        n_init=max(5, min(10, n_trials // 10)),
        time_budget=time_budget,
    )
