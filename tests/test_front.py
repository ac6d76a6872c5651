"""nas.front: the --where filter, non-domination, hypervolume, knee and Front.from_study."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from nas.errors import NasError
from nas.front import (
    Front,
    default_reference,
    hypervolume,
    knee,
    nondominated,
    parse_where,
)
from nas.search._problem import Point

optuna.logging.set_verbosity(optuna.logging.WARNING)

KNOWN = ["accuracy", "flops", "params"]
MIN2 = {"a": "minimize", "b": "minimize"}


def _p(number: int, **metrics: float) -> Point:
    return Point(number, {}, dict(metrics))


def _numbers(points: list[Point]) -> list[int]:
    return [p.number for p in points]


# --- parse_where ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "metrics", "expected"),
    [
        ("flops <= 2e6 and accuracy >= 0.9", {"flops": 1e6, "accuracy": 0.95}, True),
        ("flops <= 2e6 and accuracy >= 0.9", {"flops": 3e6, "accuracy": 0.95}, False),
        ("flops <= 2e6 and accuracy >= 0.9", {"flops": 1e6, "accuracy": 0.85}, False),
        ("flops < 1e3 or accuracy > 0.9", {"flops": 5e3, "accuracy": 0.95}, True),
        ("flops < 1e3 or accuracy > 0.9", {"flops": 5e3, "accuracy": 0.5}, False),
        ("not accuracy < 0.5", {"accuracy": 0.7}, True),
        ("not accuracy < 0.5", {"accuracy": 0.3}, False),
        ("0.5 < accuracy <= 0.9", {"accuracy": 0.9}, True),
        ("0.5 < accuracy <= 0.9", {"accuracy": 0.5}, False),
        ("0.5 < accuracy <= 0.9", {"accuracy": 0.95}, False),
        ("1 < 2 < accuracy", {"accuracy": 1.5}, False),
        ("flops / 1e6 + 1 < 3", {"flops": 1.5e6}, True),
        ("flops / 1e6 + 1 < 3", {"flops": 2.5e6}, False),
        ("accuracy * 2 - 1 >= 0.6", {"accuracy": 0.8}, True),
        ("-accuracy > -0.5", {"accuracy": 0.4}, True),
        ("+params == 10", {"params": 10}, True),
        ("params != 10", {"params": 10}, False),
        (
            "(flops < 1 or params < 1) and not (accuracy < 0.5)",
            {"flops": 0, "params": 5, "accuracy": 0.6},
            True,
        ),
        ("accuracy > 0.5", {}, False),  # a missing metric matches no comparison
    ],
)
def test_parse_where_evaluates(expr: str, metrics: dict[str, float], expected: bool) -> None:
    pred = parse_where(expr, KNOWN)
    assert pred(metrics) is expected


def test_parse_where_unknown_metric_lists_known() -> None:
    with pytest.raises(NasError) as info:
        parse_where("latency < 2 and accuracy > 0.5", KNOWN)
    msg = str(info.value)
    assert "'latency'" in msg
    assert "accuracy, flops, params" in msg


@pytest.mark.parametrize(
    "expr",
    [
        "abs(flops) < 1",
        "__import__('os').system('true')",
        "flops.real < 1",
        "accuracy == 'high'",
        "flops ** 2 < 1",
        "flops % 2 == 0",
        "[flops][0] < 1",
        "accuracy in (1, 2)",
        "flops if accuracy else params",
        "(lambda: 1)()",
        "accuracy[0] > 1",
    ],
)
def test_parse_where_rejects_anything_but_arithmetic(expr: str) -> None:
    with pytest.raises(NasError) as info:
        parse_where(expr, KNOWN)
    msg = str(info.value)
    assert "\n" not in msg
    assert "not allowed" in msg


@pytest.mark.parametrize("expr", ["flops <=", "accuracy >> ", "and accuracy", ""])
def test_parse_where_syntax_error(expr: str) -> None:
    with pytest.raises(NasError, match="not a valid expression"):
        parse_where(expr, KNOWN)


def test_parse_where_division_by_zero_does_not_crash() -> None:
    pred = parse_where("flops / params > 1", KNOWN)
    try:
        matched = pred({"flops": 5.0, "params": 0.0})
    except NasError:
        return  # a one-line NasError is an acceptable fix too
    assert matched is False


# --- nondominated / hypervolume / knee -----------------------------------------------------------


def test_nondominated_mixed_directions() -> None:
    dirs = {"accuracy": "maximize", "flops": "minimize"}
    points = [
        _p(0, accuracy=0.90, flops=100),
        _p(1, accuracy=0.80, flops=50),
        _p(2, accuracy=0.85, flops=120),  # dominated by 0
        _p(3, accuracy=0.95, flops=200),
        _p(4, accuracy=0.70, flops=60),  # dominated by 1
        _p(5, accuracy=0.90, flops=150),  # weakly dominated by 0 (equal accuracy)
    ]
    assert _numbers(nondominated(points, dirs)) == [0, 1, 3]


def test_nondominated_direction_matters() -> None:
    points = [_p(0, a=1, b=1), _p(1, a=2, b=2)]
    assert _numbers(nondominated(points, MIN2)) == [0]
    assert _numbers(nondominated(points, {"a": "maximize", "b": "maximize"})) == [1]
    assert _numbers(nondominated(points, {"a": "minimize", "b": "maximize"})) == [0, 1]


def test_nondominated_empty() -> None:
    assert nondominated([], MIN2) == []


STAIRS = [_p(0, a=1, b=3), _p(1, a=2, b=2), _p(2, a=3, b=1)]  # dominated area 6 within (4, 4)


def test_hypervolume_in_a_given_box() -> None:
    hv = hypervolume(STAIRS, MIN2, reference={"a": 4, "b": 4}, ideal={"a": 0, "b": 0})
    assert hv == pytest.approx(6 / 16)


def test_hypervolume_box_defaults_to_the_points_ideal() -> None:
    hv = hypervolume(STAIRS, MIN2, reference={"a": 4, "b": 4})
    assert hv == pytest.approx(6 / 9)  # box from (1, 1) to (4, 4)


def test_hypervolume_with_a_maximised_objective() -> None:
    dirs = {"acc": "maximize", "b": "minimize"}
    points = [_p(p.number, acc=4 - p.metrics["a"], b=p.metrics["b"]) for p in STAIRS]
    hv = hypervolume(points, dirs, reference={"acc": 0, "b": 4}, ideal={"acc": 4, "b": 0})
    assert hv == pytest.approx(6 / 16)


def test_hypervolume_ignores_points_outside_the_box() -> None:
    outside = [*STAIRS, _p(3, a=5, b=0.5)]
    hv = hypervolume(outside, MIN2, reference={"a": 4, "b": 4}, ideal={"a": 0, "b": 0})
    assert hv == pytest.approx(6 / 16)
    assert hypervolume([_p(0, a=5, b=5)], MIN2, {"a": 4, "b": 4}, {"a": 0, "b": 0}) == 0.0
    assert hypervolume([], MIN2, {"a": 4, "b": 4}) == 0.0


def test_default_reference_is_worst_plus_ten_percent() -> None:
    assert default_reference(STAIRS, MIN2) == pytest.approx({"a": 3.2, "b": 3.2})
    dirs = {"acc": "maximize", "b": "minimize"}
    points = [_p(0, acc=0.9, b=10), _p(1, acc=0.5, b=20)]
    assert default_reference(points, dirs) == pytest.approx({"acc": 0.46, "b": 21.0})


def test_knee_of_an_l_shaped_front() -> None:
    points = [
        _p(0, a=0, b=10),
        _p(1, a=0.5, b=6),
        _p(2, a=1, b=1),
        _p(3, a=6, b=0.5),
        _p(4, a=10, b=0),
    ]
    assert knee(points, MIN2).number == 2


def test_knee_with_a_maximised_objective() -> None:
    dirs = {"acc": "maximize", "flops": "minimize"}
    points = [_p(0, acc=0.50, flops=1), _p(1, acc=0.94, flops=5), _p(2, acc=0.95, flops=100)]
    assert knee(points, dirs).number == 1


# --- Front.from_study ----------------------------------------------------------------------------

DIRS = {"accuracy": "maximize", "flops": "minimize"}
TRIALS: list[tuple[float, float, float, float]] = [
    # accuracy, flops, latency_ms, constraint value (> 0 is infeasible)
    (0.90, 100, 1.0, 0.0),
    (0.80, 50, 0.5, -3.0),
    (0.99, 10, 0.1, 1.0),  # infeasible: would dominate every other trial
    (0.85, 120, 1.2, 0.0),  # dominated by 0
    (0.97, 300, 3.0, -1.0),
]


def _study() -> optuna.Study:
    study = optuna.create_study(directions=list(DIRS.values()))
    dist = {"x": FloatDistribution(0, 1)}
    for i, (acc, flops, lat, con) in enumerate(TRIALS):
        study.add_trial(
            create_trial(
                values=[acc, flops],
                params={"x": i / 10},
                distributions=dist,
                user_attrs={"metrics": {"accuracy": acc, "flops": flops, "latency_ms": lat}},
                constraints={"flops": con},
            )
        )
    # trials that are not COMPLETE never reach the front
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"x": 0.9},
            distributions=dist,
            user_attrs={"metrics": {"flops": 1.0}},
        )
    )
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.8}, distributions=dist))
    return study


def test_front_from_study_excludes_infeasible() -> None:
    front = Front.from_study(_study(), DIRS)
    assert _numbers(front.points) == [1, 0, 4]  # sorted by the first objective
    assert _numbers(front.infeasible) == [2]
    assert sorted(_numbers(front.candidates)) == [0, 1, 3, 4]
    assert len(front) == 3
    assert front.points[0].params == {"x": 0.1}
    assert front.points[0].metrics["latency_ms"] == 0.5


def test_front_from_study_where() -> None:
    front = Front.from_study(_study(), DIRS, where="flops <= 100")
    assert _numbers(front.points) == [1, 0]
    assert sorted(_numbers(front.candidates)) == [0, 1]
    assert front.where == "flops <= 100"
    # a metric that is not an objective can be filtered on too
    front = Front.from_study(_study(), DIRS, where="latency_ms >= 1 and latency_ms < 2")
    assert _numbers(front.points) == [0]


def test_front_from_study_where_cannot_resurrect_infeasible() -> None:
    front = Front.from_study(_study(), DIRS, where="accuracy > 0.98")
    assert front.points == []
    assert front.hypervolume == 0.0
    with pytest.raises(NasError, match="front is empty"):
        front.knee()


def test_front_from_study_where_unknown_metric() -> None:
    with pytest.raises(NasError) as info:
        Front.from_study(_study(), DIRS, where="energy < 1")
    assert "accuracy, flops, latency_ms" in str(info.value)


def test_front_summary() -> None:
    front = Front.from_study(_study(), DIRS)
    # reference from feasible trials: accuracy 0.80 - 0.1 * 0.17, flops 300 + 0.1 * 250
    assert front.reference == pytest.approx({"accuracy": 0.783, "flops": 325.0})
    assert front.ideal == pytest.approx({"accuracy": 0.97, "flops": 50.0})
    assert 0.0 < front.hypervolume < 1.0
    assert front.knee().number in _numbers(front.points)
    d: dict[str, Any] = json.loads(json.dumps(front.to_dict()))
    assert d["knee"] == front.knee().number
    assert [p["number"] for p in d["front"]] == [1, 0, 4]
    assert math.isclose(d["hypervolume"], front.hypervolume)


def test_describe_compression_names_every_kind_of_knob() -> None:
    from nas.report import describe_compression

    got = describe_compression(
        {
            "slimming": {"ratio": {"a": 0.2, "b": 0.4}},
            "ptq": {"calibration": "minmax"},
            "binarize": {"mode": "ternary", "activations": "float"},
            "dfq": {},
            "quantize": {"bits": 8},
        }
    )
    assert got == "slimming 0.3, ptq minmax, binarize ternary, dfq, int8"
