"""The pool connector: token counts, the pooling itself (even and odd grids), errors, gradients and a tiny VLM."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tiny_vlm import assert_forward_generate_round_trip, connector_vlm
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer

CONTEXT = ConnectorContext(vision_hidden_size=6, lm_config=LMConfig(hidden_size=10), block_cls=DecoderLayer)


def pool(**options: object):
    return build_connector(ConnectorConfig(name="pool", options=options), CONTEXT)


@pytest.mark.parametrize("kernel", [1, 2, 3])
@pytest.mark.parametrize("n_patches", [1, 4, 9, 16, 25, 49])
def test_num_tokens_matches_output(kernel: int, n_patches: int) -> None:
    connector = pool(kernel=kernel)
    out = connector(torch.randn(2, n_patches, 6))
    assert out.shape == (2, connector.num_tokens(n_patches), 10)
    assert connector.num_tokens(n_patches) == math.ceil(math.isqrt(n_patches) / kernel) ** 2


def test_odd_grid_edge_windows_average_only_the_patches_they_cover() -> None:
    grid = torch.arange(9.0).reshape(1, 9, 1)  # a 3 x 3 grid with values 0..8 in raster order
    pooled = pool().pool(grid)
    assert pooled.flatten().tolist() == [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0]


def test_pool_matches_avg_pool2d_and_feeds_the_mlp() -> None:
    connector = pool(kernel=2)
    features = torch.randn(2, 16, 6)
    grid = features.reshape(2, 4, 4, 6).permute(0, 3, 1, 2)  # (N, Dv, 4, 4)
    want = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (N, 4, Dv)
    assert torch.allclose(connector.pool(features), want)
    top_left = features.reshape(2, 4, 4, 6)[:, :2, :2].mean(dim=(1, 2))
    assert torch.allclose(connector.pool(features)[:, 0], top_left)
    assert torch.equal(connector(features), connector.projector(connector.pool(features)))
    assert sorted(connector.state_dict()) == [f"projector.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]


def test_bad_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"5 features per image, not a perfect square.*select_strategy"):
        pool().num_tokens(5)
    with pytest.raises(ConfigError, match="not a perfect square"):
        pool()(torch.randn(1, 17, 6))
    with pytest.raises(ConfigError, match=r"connector 'pool': connector\.options\.kernel must be >= 1, got 0"):
        pool(kernel=0)
    with pytest.raises(ConfigError, match=r"no option\(s\) kernal; its options are: kernel"):
        pool(kernal=2)


def test_gradients_reach_every_parameter() -> None:
    connector = pool()
    connector(torch.randn(2, 9, 6)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())


def test_vlm_forward_generate_and_round_trip(tmp_path: Path) -> None:
    model = connector_vlm("pool", {"kernel": 2}, 24)
    k = model.tokens_per_image(24, 24)
    assert k == 4  # a 3 x 3 grid pooled 2 x 2 in ceil mode
    ids = torch.tensor([[1, 5] + [63] * k + [7, 8]])
    pixels = torch.randn(1, 3, 24, 24)
    assert_forward_generate_round_trip(model, ids, pixels, tmp_path)
