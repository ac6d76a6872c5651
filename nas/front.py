"""The Pareto front of a study: non-dominated feasible trials, hypervolume, knee, selection.

Hypervolume comes from moocore. Objectives are min-max normalised between the ideal point and the
reference point (default: the worst feasible value of each objective, pushed 10 % of its range
further), so the hypervolume is a number in [0, 1].
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from nas.errors import NasError
from nas.search._problem import Point

# trial attribute (technique -> why): sampled techniques whose knobs changed nothing; they are
# not in the trial's compression, and a point's compression shows them as {NOT_APPLIED: why}
NOT_APPLIED = "not_applied"

_CMP = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def parse_where(expr: str, known: Sequence[str]) -> Callable[[Mapping[str, float]], bool]:
    """Compile ``"flops <= 2e6 and accuracy >= 0.9"`` into a predicate, safely (no ``eval``).

    Allowed: metric names, numbers, comparisons (chained too), ``and``/``or``/``not``, ``+ - * /``
    and parentheses. Unknown names raise NasError listing the known metrics.
    """
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise NasError(
            f"--where {expr!r} is not a valid expression; write e.g. "
            f'"flops <= 2e6 and accuracy >= 0.9"'
        ) from None

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.Name) and node.id not in known:
            raise NasError(
                f"--where names unknown metric {node.id!r}; known metrics: {', '.join(known)}"
            )
        allowed = (
            ast.Expression,
            ast.BoolOp,
            ast.And,
            ast.Or,
            ast.UnaryOp,
            ast.Not,
            ast.USub,
            ast.UAdd,
            ast.Compare,
            ast.BinOp,
            ast.Name,
            ast.Load,
            ast.Constant,
            *_CMP,
            *_BIN,
        )
        if not isinstance(node, allowed) or (
            isinstance(node, ast.Constant) and not isinstance(node.value, int | float)
        ):
            raise NasError(
                f"--where {expr!r}: {type(node).__name__} is not allowed; use metric "
                f"names, numbers, comparisons, and/or/not, + - * /"
            )
        for child in ast.iter_child_nodes(node):
            check(child)

    check(tree)

    def ev(node: ast.AST, env: Mapping[str, float]) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body, env)
        if isinstance(node, ast.BoolOp):
            vals = (ev(v, env) for v in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand, env)
            return (
                (not v)
                if isinstance(node.op, ast.Not)
                else (-v if isinstance(node.op, ast.USub) else v)
            )
        if isinstance(node, ast.Compare):
            left = ev(node.left, env)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = ev(comp, env)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp):
            try:
                return _BIN[type(node.op)](ev(node.left, env), ev(node.right, env))
            except ZeroDivisionError:
                return math.nan  # compares false: the point does not match
        if isinstance(node, ast.Name):
            return env.get(node.id, math.nan)
        assert isinstance(node, ast.Constant)
        return node.value

    return lambda metrics: bool(ev(tree, metrics))


def explain_no_match(expr: str, points: Sequence[Point], known: Sequence[str]) -> str:
    """Why ``--where expr`` keeps none of ``points``: the bound that removed the last model."""
    tree = ast.parse(expr, mode="eval").body
    terms = (
        [ast.get_source_segment(expr, v) or ast.unparse(v) for v in tree.values]
        if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And)
        else [expr]
    )
    left = list(points)
    for i, term in enumerate(terms):
        pred = parse_where(term, known)
        kept = [p for p in left if pred(p.metrics)]
        if not kept:
            names = sorted(
                {n.id for n in ast.walk(ast.parse(term, mode="eval")) if isinstance(n, ast.Name)}
            )
            ranges = "; ".join(
                f"{n} ranges {_fmt(min(v))}..{_fmt(max(v))}"
                for n in names
                if (v := [p.metrics[n] for p in left if n in p.metrics])
            )
            before = f" that {' and '.join(terms[:i])!r} kept" if i else ""
            return (
                f"--where {expr!r} matches none of the {len(points)} feasible trial(s): "
                f"{term!r} removed the last {len(left)}{before} ({ranges}); loosen that bound"
            )
        left = kept
    return f"--where {expr!r} matches no feasible trial; loosen it"  # pragma: no cover


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def completed_points(study: optuna.Study) -> tuple[list[Point], list[Point]]:
    """(feasible, infeasible) COMPLETE trials as points, metrics from the trial's attributes."""
    feasible, infeasible = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics = dict(t.user_attrs.get("metrics", {}))
        metrics.update(t.user_attrs.get("final_metrics", {}))
        compression = dict(t.user_attrs.get("compression", {}))
        for name, why in t.user_attrs.get(NOT_APPLIED, {}).items():
            compression[name] = {NOT_APPLIED: why}  # sampled, but it changed nothing
        p = Point(t.number, dict(t.params), metrics, compression)
        ok = all(v <= 0 for v in t.constraints.values())
        (feasible if ok else infeasible).append(p)
    return feasible, infeasible


def _signs(directions: Mapping[str, str]) -> np.ndarray:
    """+1 for minimised, -1 for maximised objectives: multiply to get a minimisation problem."""
    return np.array([-1.0 if d == "maximize" else 1.0 for d in directions.values()])


def _as_min(points: Sequence[Point], directions: Mapping[str, str]) -> np.ndarray:
    sign = _signs(directions)
    return (
        np.array([[p.metrics[n] for n in directions] for p in points], dtype=float).reshape(
            len(points), len(directions)
        )
        * sign
    )


def nondominated(points: Sequence[Point], directions: Mapping[str, str]) -> list[Point]:
    if not points:
        return []
    import moocore

    mask = moocore.is_nondominated(_as_min(points, directions), keep_weakly=False)
    return [p for p, keep in zip(points, mask, strict=True) if keep]


def default_reference(points: Sequence[Point], directions: Mapping[str, str]) -> dict[str, float]:
    """Worst value of each objective over ``points``, pushed 10 % of its range further."""
    m = _as_min(points, directions)
    worst, best = m.max(axis=0), m.min(axis=0)
    ref = worst + 0.1 * np.where(worst > best, worst - best, np.maximum(np.abs(worst), 1.0))
    sign = _signs(directions)
    return {n: float(r * s) for n, r, s in zip(directions, ref, sign, strict=True)}


def ideal_point(points: Sequence[Point], directions: Mapping[str, str]) -> dict[str, float]:
    """The best value of each objective over ``points``."""
    m = _as_min(points, directions).min(axis=0)
    sign = _signs(directions)
    return {n: float(v * s) for n, v, s in zip(directions, m, sign, strict=True)}


def hypervolume(
    points: Sequence[Point],
    directions: Mapping[str, str],
    reference: Mapping[str, float],
    ideal: Mapping[str, float] | None = None,
) -> float:
    """Hypervolume of ``points`` in the ideal-to-reference box (normalised to [0, 1])."""
    if not points:
        return 0.0
    import moocore

    sign = _signs(directions)
    m = _as_min(points, directions)
    ref = np.array([reference[n] for n in directions]) * sign
    lo = (np.array([ideal[n] for n in directions]) * sign) if ideal else m.min(axis=0)
    scale = np.where(ref > lo, ref - lo, 1.0)
    norm = (m - lo) / scale
    inside = np.all(norm < 1.0, axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(norm[inside], ref=np.ones(len(directions))))


def knee(points: Sequence[Point], directions: Mapping[str, str]) -> Point:
    """The front point closest to the ideal point after min-max normalisation of each objective."""
    m = _as_min(points, directions)
    span = np.where(m.max(0) > m.min(0), m.max(0) - m.min(0), 1.0)
    d = np.linalg.norm((m - m.min(0)) / span, axis=1)
    return points[int(np.argmin(d))]


@dataclass
class Front:
    """Non-dominated feasible trials of a run (after an optional ``where`` filter)."""

    points: list[Point]
    directions: dict[str, str]
    candidates: list[Point]  # every feasible completed trial that passed the filter
    infeasible: list[Point] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)
    where: str | None = None

    @classmethod
    def from_study(
        cls, study: optuna.Study, directions: Mapping[str, str], where: str | None = None
    ) -> Front:
        feasible, infeasible = completed_points(study)
        if where:
            known = sorted({k for p in feasible + infeasible for k in p.metrics} | set(directions))
            pred = parse_where(where, known)
            kept = [p for p in feasible if pred(p.metrics)]
        else:
            kept = feasible
        dirs = dict(directions)
        front = sorted(nondominated(kept, dirs), key=lambda p: p.metrics[next(iter(dirs))])
        ref = default_reference(feasible, dirs) if feasible else {}
        return cls(front, dirs, kept, infeasible, ref, where)

    @property
    def hypervolume(self) -> float:
        if not self.points:
            return 0.0
        return hypervolume(self.points, self.directions, self.reference, ideal=self.ideal)

    @property
    def ideal(self) -> dict[str, float]:
        return ideal_point(self.candidates or self.points, self.directions)

    def knee(self) -> Point:
        if not self.points:
            raise NasError(
                "the front is empty; nothing to select (loosen --where or run more trials)"
            )
        return knee(self.points, self.directions)

    def best(self, metric: str, direction: str | None = None) -> Point:
        """The best model on ``metric`` (an objective, or any recorded metric with ``direction``).

        On an objective it is a front model (ties broken by the knee's distance); on another
        metric it is the best of every feasible trial that passed the ``where`` filter.
        """
        known = sorted({k for p in self.candidates for k in p.metrics} | set(self.directions))
        if metric not in known:
            raise NasError(
                f"--best names unknown metric {metric!r}; known metrics: {', '.join(known)}"
            )
        direction = self.directions.get(metric, direction)
        if direction not in ("maximize", "minimize"):
            raise NasError(
                f"--best {metric}: its direction is unknown (it is not an objective of this "
                f"run); pick one of {', '.join(self.directions)}"
            )
        pool = self.points if metric in self.directions else self.candidates
        pool = [p for p in pool if math.isfinite(p.metrics.get(metric, math.nan))]
        if not pool:
            raise NasError(f"--best {metric}: no model of this front has a value for it")
        sign = -1.0 if direction == "maximize" else 1.0
        top = min(sign * p.metrics[metric] for p in pool)
        ties = [p for p in pool if sign * p.metrics[metric] == top]
        return knee(ties, self.directions) if len(ties) > 1 else ties[0]

    def reasons(self) -> dict[int, str]:
        """Why each front model is on the front, in words.

        ``highest accuracy`` / ``lowest flops`` for a model that is the best on an objective;
        otherwise what it wins given its other values, e.g. ``best accuracy at flops <= 2e+05``
        (every model with at most its flops is less accurate: that is what non-dominated means).
        """
        if not self.points:
            return {}
        pool = self.candidates or self.points
        dirs = self.directions
        sign = {n: (-1.0 if d == "maximize" else 1.0) for n, d in dirs.items()}
        best = {n: min(sign[n] * p.metrics[n] for p in pool) for n in dirs}
        main = next((n for n, d in dirs.items() if d == "maximize"), next(iter(dirs)))
        out = {}
        for p in self.points:
            wins = [
                ("highest " if dirs[n] == "maximize" else "lowest ") + n
                for n in dirs
                if sign[n] * p.metrics[n] <= best[n]
            ]
            if not wins:
                bounds = ", ".join(
                    f"{n} {'>=' if dirs[n] == 'maximize' else '<='} {_fmt(p.metrics[n])}"
                    for n in dirs
                    if n != main
                )
                wins = [f"best {main} at {bounds}"]
            out[p.number] = ", ".join(wins)
        return out

    def to_dict(self) -> dict[str, Any]:
        k = self.knee().number if self.points else None
        why = self.reasons()
        return {
            "directions": self.directions,
            "where": self.where,
            "reference": self.reference,
            "hypervolume": self.hypervolume,
            "knee": k,
            "front": [
                {
                    "number": p.number,
                    "why": why.get(p.number, ""),
                    "params": p.params,
                    "metrics": p.metrics,
                    "compression": p.compression,
                }
                for p in self.points
            ],
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def __getitem__(self, i: int) -> Point:
        return self.points[i]


PROXY_COSTS = ("flops", "energy_uj")  # counted from the model; latency_ms* is measured
DISAGREEMENT_FACTOR = 2.0


def cost_disagreements(
    metrics: Mapping[Any, Mapping[str, Any]], factor: float = DISAGREEMENT_FACTOR
) -> dict[Any, str]:
    """Models whose counted cost (multiply-adds, energy) and measured latency disagree by more
    than the timing noise.

    Both are compared with the model that has the most of the counted cost: a model is flagged
    when one ratio is ``factor`` times the other even at the edge of the measured spread, e.g.
    ``flops x0.08 but latency_ms_batch1 x0.45 of trial 7`` (depthwise layers and small models
    are overhead-bound on a CPU at batch 1), or the other way (int8 kernels cut latency more than
    multiply-adds). Only latencies with a measured spread count (``latency_ms_batch{B}`` with its
    ``latency_spread_batch{B}``: a relative half-range, as :func:`nas.export.latencies` records).
    Returns trial -> reason.
    """
    reasons: dict[Any, list[str]] = {}
    measured = sorted({k for m in metrics.values() for k in m if k.startswith("latency_ms_batch")})
    for proxy in PROXY_COSTS:
        have = {n: m for n, m in metrics.items() if _positive(m.get(proxy))}
        if len(have) < 2:
            continue
        ref = max(have, key=lambda n: have[n][proxy])
        for lat in measured:
            if not _positive(have[ref].get(lat)):
                continue
            spread_key = lat.replace("latency_ms_batch", "latency_spread_batch")
            ref_spread = have[ref].get(spread_key)
            if ref_spread is None:
                continue
            for n, m in have.items():
                if n == ref or not _positive(m.get(lat)) or m.get(spread_key) is None:
                    continue
                counted = m[proxy] / have[ref][proxy]
                timed = m[lat] / have[ref][lat]
                noise = 1 + float(m[spread_key]) + float(ref_spread)  # the ratio's error bound
                if timed / noise >= factor * counted:
                    why = "latency fell less"
                elif counted >= factor * timed * noise:
                    why = "latency fell more"
                else:
                    continue
                who = f"trial {ref}" if isinstance(ref, int) else str(ref)
                reasons.setdefault(n, []).append(
                    f"{proxy} x{counted:.2g} but {lat} x{timed:.2g} of {who} ({why})"
                )
    return {n: "; ".join(r) for n, r in reasons.items()}


def final_cost_disagreements(
    points: Sequence[Point], finals: Mapping[int, Mapping[str, Any]]
) -> dict[int, str]:
    """:func:`cost_disagreements` of front ``points``, a finalized model judged on its final
    metrics (``finals``: trial -> ``nas finalize`` record) over its search-time ones."""
    return cost_disagreements(
        {p.number: {**p.metrics, **finals.get(p.number, {}).get("metrics", {})} for p in points}
    )


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0
