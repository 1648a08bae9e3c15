"""The mlp and linear connectors: depth, shapes, names and errors."""

from __future__ import annotations

import pytest
import torch

from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer

CONTEXT = ConnectorContext(vision_hidden_size=12, lm_config=LMConfig(hidden_size=20), block_cls=DecoderLayer)


def test_mlp_depth_sets_the_number_of_linears() -> None:
    connector = build_connector(ConnectorConfig(name="mlp", depth=3), CONTEXT)
    assert sorted(connector.state_dict()) == [f"linear_{i}.{p}" for i in (1, 2, 3) for p in ("bias", "weight")]
    features = torch.randn(2, 7, 12)
    out = connector(features)
    assert out.shape == (2, connector.num_tokens(7), 20) == (2, 7, 20)
    act = torch.nn.GELU()
    want = connector.linear_3(act(connector.linear_2(act(connector.linear_1(features)))))
    assert torch.equal(out, want)


def test_linear_is_one_projection() -> None:
    connector = build_connector(ConnectorConfig(name="linear", depth=2, bias=False), CONTEXT)
    assert sorted(connector.state_dict()) == ["linear_1.weight"]
    features = torch.randn(1, 4, 12)
    assert torch.equal(connector(features), features @ connector.linear_1.weight.T)


def test_depth_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"connector\.depth must be >= 1, got 0"):
        build_connector(ConnectorConfig(name="mlp", depth=0), CONTEXT)


def test_gradients_reach_every_parameter() -> None:
    connector = build_connector(ConnectorConfig(name="mlp"), CONTEXT)
    connector(torch.randn(2, 3, 12)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())
