"""nas.config: experiment schema, shorthand forms and one-line errors that name the key and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nas.config import Experiment, load_experiment, parse_experiment
from nas.errors import NasError

MINIMAL: dict[str, Any] = {"space": "mlp", "objectives": ["accuracy", "params"]}
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "data",
    "space",
    "train",
    "objectives",
    "constraints",
    "search",
    "export",
)


def _error(data: Any) -> str:
    with pytest.raises(NasError) as info:
        parse_experiment(data)
    msg = str(info.value)
    assert "\n" not in msg, f"error must be one line, got {msg!r}"
    return msg


def _with(**overrides: Any) -> dict[str, Any]:
    return {**MINIMAL, **overrides}


# --- valid input ---------------------------------------------------------------------------------


def test_minimal_experiment_fills_defaults() -> None:
    exp = parse_experiment(MINIMAL)
    assert isinstance(exp, Experiment)
    assert exp.space.name == "mlp"
    assert exp.space.args == {}
    assert list(exp.objectives) == ["accuracy", "params"]
    assert all(spec.direction is None and spec.args == {} for spec in exp.objectives.values())
    assert exp.data.name == "digits"
    assert exp.constraints == {}
    assert exp.search.trials == 20
    assert exp.search.sampler == "auto"


def test_nas_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_experiment({})


def test_objectives_as_direction_mapping() -> None:
    exp = parse_experiment(_with(objectives={"accuracy": "maximize", "flops": "minimize"}))
    assert {k: v.direction for k, v in exp.objectives.items()} == {
        "accuracy": "maximize",
        "flops": "minimize",
    }


def test_objectives_as_full_spec_with_args() -> None:
    exp = parse_experiment(
        _with(
            objectives={
                "accuracy": None,
                "latency_ms": {"direction": "minimize", "args": {"batch_size": 64}},
            }
        )
    )
    assert exp.objectives["accuracy"].direction is None
    assert exp.objectives["latency_ms"].direction == "minimize"
    assert exp.objectives["latency_ms"].args == {"batch_size": 64}


def test_space_and_data_string_shorthands() -> None:
    exp = parse_experiment(_with(space="cnn", data="fashion-mnist"))
    assert exp.space.name == "cnn"
    assert exp.data.name == "fashion-mnist"
    assert exp.data.val_fraction == 0.1


def test_space_and_data_full_forms() -> None:
    exp = parse_experiment(
        _with(
            space={"name": "cnn", "args": {"max_depth": 2}},
            data={"name": "mnist1d", "subset": {"train": 100}},
        )
    )
    assert exp.space.args == {"max_depth": 2}
    assert exp.data.subset is not None
    assert exp.data.subset.train == 100
    assert exp.data.subset.val is None


def test_constraints_with_one_or_both_bounds() -> None:
    exp = parse_experiment(
        _with(constraints={"flops": {"max": 2e6}, "accuracy": {"min": 0.5, "max": 1.0}})
    )
    assert exp.constraints["flops"].max == 2e6
    assert exp.constraints["flops"].min is None
    assert (exp.constraints["accuracy"].min, exp.constraints["accuracy"].max) == (0.5, 1.0)


def test_to_dict_round_trips() -> None:
    exp = parse_experiment(_with(objectives={"accuracy": "maximize"}, search={"trials": 3}))
    assert parse_experiment(exp.to_dict()) == exp


def test_load_experiment_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "space: cnn\n"
        "data: digits\n"
        "objectives:\n"
        "  accuracy: maximize\n"
        "  latency_ms: {direction: minimize, args: {batch_size: 4}}\n"
        "constraints:\n"
        "  flops: {max: 1.0e+6}\n"
        "search: {trials: 5, sampler: random}\n"
    )
    exp = load_experiment(path)
    assert exp.space.name == "cnn"
    assert exp.objectives["latency_ms"].args == {"batch_size": 4}
    assert exp.constraints["flops"].max == 1e6
    assert (exp.search.trials, exp.search.sampler) == (5, "random")


# --- bad input: one line naming the key and the fix ----------------------------------------------


def test_unknown_top_level_key_lists_valid_keys() -> None:
    msg = _error(_with(trails=3))
    assert "unknown key 'trails'" in msg
    for key in TOP_LEVEL_KEYS:
        assert key in msg


def test_unknown_nested_key_lists_that_sections_keys() -> None:
    msg = _error(_with(search={"trails": 3}))
    assert "'search.trails'" in msg
    assert "trials" in msg and "sampler" in msg and "workers" in msg
    assert "objectives" not in msg  # the keys of the section, not of the top level


def test_unknown_deeply_nested_key() -> None:
    msg = _error(_with(data={"subset": {"tran": 3}}))
    assert "'data.subset.tran'" in msg
    assert "train" in msg and "val" in msg


@pytest.mark.parametrize(
    ("data", "valid"),
    [
        ({"objectives": {"accuracy": {"dirction": "maximize"}}}, ("direction", "args")),
        ({"constraints": {"flops": {"maxx": 3}}}, ("min", "max")),
    ],
    ids=["objective-spec", "constraint-bound"],
)
def test_unknown_key_under_a_named_entry_lists_valid_keys(
    data: dict[str, Any], valid: tuple[str, ...]
) -> None:
    msg = _error(_with(**data))
    assert "unknown key" in msg
    for key in valid:
        assert key in msg.split("valid keys here are:")[1]


def test_misspelt_required_key_names_the_unknown_key() -> None:
    msg = _error({"spce": "mlp", "objectives": ["accuracy"]})
    assert "'spce'" in msg


def test_missing_required_key() -> None:
    msg = _error({"objectives": ["accuracy"]})
    assert "space" in msg
    assert "required" in msg and "add it" in msg


def test_inverted_constraint_range() -> None:
    msg = _error(_with(constraints={"flops": {"min": 3, "max": 1}}))
    assert "constraints.flops" in msg
    assert "min <= max" in msg
    assert "min=3" in msg and "max=1" in msg
    assert "swap" in msg


def test_constraint_without_bounds() -> None:
    msg = _error(_with(constraints={"flops": {}}))
    assert "constraints.flops" in msg
    assert "min or max" in msg


def test_unknown_sampler_lists_choices() -> None:
    msg = _error(_with(search={"sampler": "annealing"}))
    assert "search.sampler" in msg
    assert "'annealing'" in msg
    for name in ("auto", "tpe", "nsga2", "nsga3", "random", "gp"):
        assert name in msg


@pytest.mark.parametrize("trials", [0, -5])
def test_non_positive_trials(trials: int) -> None:
    msg = _error(_with(search={"trials": trials}))
    assert "search.trials" in msg
    assert "greater than 0" in msg
    assert f"got {trials}" in msg


@pytest.mark.parametrize("objectives", [[], {}], ids=["list", "mapping"])
def test_empty_objectives(objectives: Any) -> None:
    msg = _error(_with(objectives=objectives))
    assert "objectives" in msg
    assert "at least one objective" in msg


@pytest.mark.parametrize(
    "objectives",
    [{"accuracy": "up"}, {"accuracy": {"direction": "up"}}],
    ids=["shorthand", "full"],
)
def test_bad_direction(objectives: dict[str, Any]) -> None:
    msg = _error(_with(objectives=objectives))
    assert "objectives.accuracy.direction" in msg
    assert "'maximize'" in msg and "'minimize'" in msg
    assert "'up'" in msg


def test_not_a_mapping() -> None:
    msg = _error(["space", "mlp"])
    assert "mapping" in msg


def test_source_names_the_file_in_errors() -> None:
    with pytest.raises(NasError, match=r"^exp\.yaml: search\.trials"):
        parse_experiment(_with(search={"trials": 0}), source="exp.yaml")


# --- files ---------------------------------------------------------------------------------------


def _load_error(path: Path) -> str:
    with pytest.raises(NasError) as info:
        load_experiment(path)
    msg = str(info.value)
    assert "\n" not in msg, f"error must be one line, got {msg!r}"
    return msg


def test_invalid_yaml_syntax_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("space: mlp\n  objectives: x: y\n")
    msg = _load_error(path)
    assert str(path) in msg
    assert "invalid YAML at line 2" in msg
    assert "fix the syntax" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = _load_error(path)
    assert str(path) in msg
    assert "does not exist" in msg


def test_yaml_list_is_not_an_experiment(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- space: mlp\n- objectives: [accuracy]\n")
    msg = _load_error(path)
    assert str(path) in msg
    assert "mapping" in msg


def test_schema_error_in_file_is_prefixed_with_path(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("space: mlp\nobjectives: [accuracy]\nsearch: {sampler: nope}\n")
    msg = _load_error(path)
    assert msg.startswith(f"{path}: search.sampler")


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("space: mlp\nobjectives: [accuracy]\nspace: cnn\n")
    with pytest.raises(NasError, match=r"duplicate key 'space' at line 3"):
        load_experiment(path)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_experiments_are_valid(path: Path) -> None:
    from nas.compress import parse_compression
    from nas.pipeline import resolve_objectives

    exp = load_experiment(path)
    resolve_objectives(exp)
    parse_compression(exp.compression)
