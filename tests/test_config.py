"""Typed configs: unknown keys and wrong types are named, overrides reach nested keys and list items."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from vlbridge.config import ModelConfig, apply_overrides, bounded, from_dict, load_yaml, to_dict
from vlbridge.errors import ConfigError


def test_round_trip_and_defaults() -> None:
    cfg = from_dict(ModelConfig, {"connector": {"name": "linear"}, "vision": {"feature_layer": [-2, -1]}})
    assert cfg.connector.name == "linear" and cfg.vision.feature_layer == [-2, -1]
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) language_model\.hiden_size"):
        from_dict(ModelConfig, {"language_model": {"hiden_size": 3}})


def test_unknown_key_in_an_optional_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) vision\.hiden_size"):
        from_dict(ModelConfig, {"vision": {"hiden_size": 3}})
    with pytest.raises(ConfigError, match=r"eos_token_id: 'x' does not fit .*expected int"):
        from_dict(ModelConfig, {"language_model": {"eos_token_id": "x"}})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"language_model\.num_hidden_layers: expected int, got str"):
        from_dict(ModelConfig, {"language_model": {"num_hidden_layers": "two"}})
    with pytest.raises(ConfigError, match="got a boolean"):
        from_dict(ModelConfig, {"language_model": {"hidden_size": True}})


@dataclass(frozen=True)
class _Choice:
    mode: Literal["fast", "exact"] = "fast"
    level: Literal[1, 2] = 1


def test_literal_fields_take_one_of_their_values() -> None:
    assert from_dict(_Choice, {"mode": "exact", "level": 2}) == _Choice("exact", 2)
    with pytest.raises(ConfigError, match=r"^mode: expected one of 'fast', 'exact', got 'quick'$"):
        from_dict(_Choice, {"mode": "quick"})
    with pytest.raises(ConfigError, match=r"^level: expected one of 1, 2, got True$"):
        from_dict(_Choice, {"level": True})  # True == 1, but it is no level


def test_null_vision_means_text_only() -> None:
    assert from_dict(ModelConfig, {"vision": None}).vision is None


def test_overrides_nested_and_list_items() -> None:
    data = {"a": {"b": 1}, "stages": [{"steps": 3}, {"steps": 4}]}
    out = apply_overrides(data, ["a.b=2", "a.c=[1, 2]", "stages.1.steps=9"])
    assert out == {"a": {"b": 2, "c": [1, 2]}, "stages": [{"steps": 3}, {"steps": 9}]}
    assert data["stages"][1]["steps"] == 4, "the input must not be mutated"
    with pytest.raises(ConfigError, match="is a list of 2"):
        apply_overrides(data, ["stages.5.steps=1"])
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides(data, ["a.b"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides(data, ["a.b.c=1"])


def test_exponent_without_a_dot_is_a_float(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads `1e-3` as a string; a learning rate written that way must still be a number."""
    out = apply_overrides({"lr": {"lm": 1.0}}, ["lr.lm=1e-3", "lr.vit=2E+2", "steps=10", "name=e5", "tag=1e"])
    assert out == {"lr": {"lm": 1e-3, "vit": 200.0}, "steps": 10, "name": "e5", "tag": "1e"}
    assert isinstance(out["steps"], int)
    (tmp_path / "r.yaml").write_text("lr: 3e-4\nsteps: 100\nversion: '1e3'\n")
    assert load_yaml(tmp_path / "r.yaml") == {"lr": 3e-4, "steps": 100, "version": "1e3"}


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_yaml(tmp_path / "list.yaml")


def test_load_yaml_base_lays_the_variant_over_its_base(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "root.yaml").write_text(
        "seed: 0\nmodel:\n  connector: {name: mlp, depth: 2}\nstages: [{name: a}, {name: b}]\n"
    )
    (tmp_path / "configs" / "pool.yaml").write_text(
        "base: ../root.yaml\nmodel:\n  connector: {name: pool}\nstages: [{name: c}]\n"
    )
    data = load_yaml(tmp_path / "configs" / "pool.yaml")
    assert data == {"seed": 0, "model": {"connector": {"name": "pool", "depth": 2}}, "stages": [{"name": "c"}]}


def test_load_yaml_base_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_yaml(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("seed: 1\nstages: [1\n", 3, 1),  # an unclosed list
        ("seed: 1\n  run_dir: x\n", 2, 10),  # a key indented into a scalar
        ("seed: 1\nname: a: b\n", 2, 8),  # a second `: ` on one line
    ],
)
def test_yaml_syntax_errors_name_the_file_line_and_column(tmp_path: Path, text: str, line: int, column: int) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert message.startswith(f"config file {path}, line {line}, column {column}: ") and "\n" not in message
    assert "fix the YAML" in message


def test_an_override_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        apply_overrides({"a": 1}, ["a=2", "k=["])
    message = str(err.value)
    assert message.startswith("override 'k=[', line 1, column 2: ") and "\n" not in message
    assert "quote the value" in message


@pytest.mark.parametrize(
    ("encoding", "hint"),
    [("latin-1", "line 2"), ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")],
)
def test_a_config_file_not_in_utf8_is_refused_naming_the_file(tmp_path: Path, encoding: str, hint: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes("seed: 1\nrun_dir: runs/café\n".encode(encoding))
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert message.startswith(f"config file {path} ") and "save it as UTF-8" in message and hint in message


def test_a_utf8_config_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes("seed: 1\nrun_dir: runs/café\n".encode("utf-8-sig"))
    assert load_yaml(path) == {"seed": 1, "run_dir": "runs/café"}


@dataclass(frozen=True)
class _Ranged:
    count: int = field(default=1, metadata=bounded(1))
    ratio: float = field(default=0.5, metadata=bounded(0, 1, high_open=True))
    rate: float | None = field(default=None, metadata=bounded(0, low_open=True))
    rates: dict[str, float] = field(default_factory=dict, metadata=bounded(0, low_open=True))
    scale: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 0}, "count is 0; set it to a number >= 1"),
        ({"count": -3}, "count is -3; set it to a number >= 1"),
        ({"ratio": 1}, "ratio is 1.0; set it to a number in [0, 1)"),
        ({"rate": 0}, "rate is 0.0; set it to a number > 0"),
        ({"rates": {"a": 1e-3, "b": -1}}, "rates.b is -1; set it to a number > 0"),
        ({"scale": float("nan")}, "scale is nan; set it to a finite number"),
        ({"scale": float("-inf")}, "scale is -inf; set it to a finite number"),
        ({"rates": {"a": float("inf")}}, "rates.a is inf; set it to a finite number"),
        ({"options": {"dropout": [0.1, float("nan")]}}, "options.dropout[1] is nan; set it to a finite number"),
    ],
)
def test_numbers_outside_their_declared_range_and_non_finite_floats_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(_Ranged, data)
    assert str(err.value) == message


def test_numbers_in_range_read_as_given() -> None:
    data = {"count": 3, "ratio": 0, "rate": 2, "rates": {"a": 1e-3}, "scale": -2.5, "options": {"k": "x"}}
    assert from_dict(_Ranged, data) == _Ranged(3, 0.0, 2.0, {"a": 1e-3}, -2.5, {"k": "x"})


def test_model_sizes_and_non_finite_model_floats_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^language_model\.hidden_size is 0; set it to a number >= 1$"):
        from_dict(ModelConfig, {"language_model": {"hidden_size": 0}})
    with pytest.raises(ConfigError, match=r"^vision\.patch_size is -16; set it to a number >= 1$"):
        from_dict(ModelConfig, {"vision": {"patch_size": -16}})
    with pytest.raises(ConfigError, match=r"^language_model\.rms_norm_eps is nan; set it to a finite number$"):
        from_dict(ModelConfig, {"language_model": {"rms_norm_eps": float("nan")}})
    with pytest.raises(ConfigError, match=r"^connector\.options\.dropout is inf; set it to a finite number$"):
        from_dict(ModelConfig, {"connector": {"name": "qformer", "options": {"dropout": float("inf")}}})
