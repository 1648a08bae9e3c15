"""The connector registry: exact names only, and unknown names list the known ones."""

from __future__ import annotations

import pytest

import vlbridge
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer
from vlbridge.registry import Registry


def test_available_lists_registered_connectors() -> None:
    assert vlbridge.connectors.available() == [
        "mlp",
        "linear",
        "qformer",
        "perceiver",
        "gated_xattn",
        "pool",
        "tome",
        "patch_merger",
        "mini",
    ]  # SPEC section 2, in its order


def test_unknown_connector_names_the_known_ones() -> None:
    context = ConnectorContext(16, LMConfig(hidden_size=32), DecoderLayer)
    with pytest.raises(ConfigError, match=r"unknown connector 'mlp2x_gelu'; known connectors: .*linear, .*mlp"):
        build_connector(ConnectorConfig(name="mlp2x_gelu"), context)
    with pytest.raises(ConfigError, match="unknown connector 'ml'"):
        build_connector(ConnectorConfig(name="ml"), context)


def test_registering_twice_is_a_bug() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(2)
