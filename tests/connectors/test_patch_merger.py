"""The patch_merger connector: 2x2 spatial grouping, Qwen2-VL layout and norm order, counts, errors, a tiny VLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_vlm import assert_forward_generate_round_trip, connector_vlm
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer

CONTEXT = ConnectorContext(vision_hidden_size=6, lm_config=LMConfig(hidden_size=10), block_cls=DecoderLayer)


def merger(**options: object):
    return build_connector(ConnectorConfig(name="patch_merger", options=options), CONTEXT)


@pytest.mark.parametrize(("merge", "n_patches"), [(2, 4), (2, 16), (2, 36), (2, 64), (3, 9), (3, 36), (1, 5 * 5)])
def test_num_tokens_matches_output(merge: int, n_patches: int) -> None:
    connector = merger(merge=merge)
    out = connector(torch.randn(2, n_patches, 6))
    assert out.shape == (2, connector.num_tokens(n_patches), 10) == (2, n_patches // merge**2, 10)


def test_groups_exactly_the_two_by_two_spatial_neighbours() -> None:
    side = 4
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    features = torch.stack([rows, cols], dim=-1).reshape(1, side * side, 2).float()  # feature = (row, col)
    grouped = merger().group(features)  # (1, 4, 8)
    for block_row in range(2):
        for block_col in range(2):
            r, c = 2 * block_row, 2 * block_col
            want = [r, c, r, c + 1, r + 1, c, r + 1, c + 1]  # top-left, top-right, bottom-left, bottom-right
            assert grouped[0, 2 * block_row + block_col].tolist() == want


def test_layout_and_norm_order() -> None:
    features = torch.randn(2, 16, 6)
    qwen2 = merger()
    assert sorted(qwen2.state_dict()) == [f"{m}.{p}" for m in ("ln_q", "mlp.0", "mlp.2") for p in ("bias", "weight")]
    assert qwen2.ln_q.normalized_shape == (6,) and qwen2.mlp[0].weight.shape == (24, 24)
    assert qwen2.mlp[2].weight.shape == (10, 24)
    assert torch.allclose(qwen2(features), qwen2.mlp(qwen2.group(qwen2.ln_q(features))))
    merged = merger(norm="merged")
    assert merged.ln_q.normalized_shape == (24,)
    assert torch.allclose(merged(features), merged.mlp(merged.ln_q(merged.group(features))))


def test_bad_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"3 x 3 \(9 patches, not divisible by 4\)"):
        merger().num_tokens(9)
    with pytest.raises(ConfigError, match="not divisible by 4"):
        merger()(torch.randn(1, 49, 6))  # a 7 x 7 grid
    with pytest.raises(ConfigError, match=r"17 features per image, not a perfect square.*select_strategy"):
        merger()(torch.randn(1, 17, 6))
    with pytest.raises(ConfigError, match=r"'patch_merger': connector\.options\.merge must be >= 1, got 0"):
        merger(merge=0)
    with pytest.raises(ConfigError, match=r"connector\.options\.norm: expected one of 'patch', 'merged', got 'post'"):
        merger(norm="post")


def test_gradients_reach_every_parameter() -> None:
    for norm in ("patch", "merged"):
        connector = merger(norm=norm)
        connector(torch.randn(2, 16, 6)).square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())


def test_vlm_forward_generate_and_round_trip(tmp_path: Path) -> None:
    model = connector_vlm("patch_merger", None, 32)
    k = model.tokens_per_image(32, 32)
    assert k == 4  # a 4 x 4 grid merged 2 x 2
    ids = torch.tensor([[1, 5] + [63] * k + [7] + [63] * k + [8]])
    pixels = torch.randn(2, 3, 32, 32)
    assert_forward_generate_round_trip(model, ids, pixels, tmp_path)
