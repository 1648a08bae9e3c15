"""Connector options: each connector declares a frozen options dataclass, and `parse_options` is the one path from a
config's `connector.options` mapping to it (unknown options and wrong types name the connector, the option, the
expected type and what it accepts; defaults fill the rest). The mapping itself is what a checkpoint saves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import vlbridge
from tiny_vlm import tiny_mapping
from vlbridge.config import ConnectorConfig, LMConfig, ModelConfig, from_dict, load_yaml, to_dict
from vlbridge.connectors import CONNECTORS, ConnectorContext, build_connector
from vlbridge.connectors.base import NoOptions, describe_options, parse_options
from vlbridge.connectors.patch_merger import PatchMergerOptions
from vlbridge.connectors.pool import PoolOptions
from vlbridge.connectors.qformer import QFormerOptions
from vlbridge.connectors.tome import ToMeOptions
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer
from vlbridge.model.vlm import VisionLanguageModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "connectors"
CONTEXT = ConnectorContext(6, LMConfig(hidden_size=8), DecoderLayer)


def shipped_options(name: str) -> dict:
    """The options configs/connectors/<name>.yaml gives the connector (an empty mapping when it gives none)."""
    return load_yaml(CONFIGS / f"{name}.yaml")["model"]["connector"].get("options", {})


@pytest.mark.parametrize("name", vlbridge.connectors.available())
def test_every_connector_declares_frozen_options_with_defaults(name: str) -> None:
    options_cls = CONNECTORS.get(name).Options
    assert dataclasses.is_dataclass(options_cls) and options_cls.__dataclass_params__.frozen
    assert parse_options(name, options_cls, {}) == options_cls()  # every option has a default


@pytest.mark.parametrize("name", vlbridge.connectors.available())
def test_every_connectors_options_round_trip(name: str) -> None:
    options_cls = CONNECTORS.get(name).Options
    for given in ({}, shipped_options(name)):
        options = parse_options(name, options_cls, given)
        written = to_dict(options)
        assert written.items() >= given.items()  # what was given is kept, the rest is the defaults
        assert parse_options(name, options_cls, json.loads(json.dumps(written))) == options


def test_defaults_are_filled_in() -> None:
    assert build_connector(ConnectorConfig(name="pool"), CONTEXT).options == PoolOptions(kernel=2)
    merger = build_connector(ConnectorConfig(name="patch_merger", options={"norm": "merged"}), CONTEXT)
    assert merger.options == PatchMergerOptions(merge=2, norm="merged")
    assert build_connector(ConnectorConfig(name="mlp"), CONTEXT).options == NoOptions()
    assert parse_options("tome", ToMeOptions, {"ratio": 1}) == ToMeOptions(target=None, ratio=1.0)  # an int is a float


def test_unknown_option_names_the_connector_and_what_it_accepts() -> None:
    with pytest.raises(ConfigError) as err:
        build_connector(ConnectorConfig(name="pool", options={"kernal": 3}), CONTEXT)
    assert str(err.value) == "connector 'pool' has no option(s) kernal; its options are: kernel: int = 2"
    with pytest.raises(ConfigError, match=r"^connector 'mlp' has no option\(s\) kernel; its options are: none$"):
        build_connector(ConnectorConfig(name="mlp", options={"kernel": 2}), CONTEXT)


def test_wrong_type_names_the_connector_the_option_and_the_expected_type() -> None:
    with pytest.raises(ConfigError) as err:
        build_connector(ConnectorConfig(name="pool", options={"kernel": "2"}), CONTEXT)
    assert str(err.value) == (
        "connector 'pool': connector.options.kernel: expected int, got str '2'; its options are: kernel: int = 2"
    )
    with pytest.raises(ConfigError, match=r"^connector 'patch_merger': connector\.options\.norm: expected one of "):
        build_connector(ConnectorConfig(name="patch_merger", options={"norm": 1}), CONTEXT)
    with pytest.raises(ConfigError, match=r"options\.hidden_size: 1\.5 does not fit int \| None"):
        parse_options("qformer", QFormerOptions, {"hidden_size": 1.5})


def test_describe_options_lists_types_and_defaults() -> None:
    assert describe_options(PatchMergerOptions) == "merge: int = 2, norm: Literal['patch', 'merged'] = 'patch'"
    assert describe_options(ToMeOptions) == "target: int | None = None, ratio: float | None = None"
    assert describe_options(NoOptions) == "none"


def test_a_saved_config_keeps_the_options_as_given() -> None:
    config = from_dict(ModelConfig, tiny_mapping("tome", {"ratio": 0.5}))
    model = VisionLanguageModel(config)
    assert model.connector.options == ToMeOptions(ratio=0.5)
    assert to_dict(model.config)["connector"]["options"] == {"ratio": 0.5}  # not the defaults-filled dataclass
