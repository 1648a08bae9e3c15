"""The tome connector: exact token counts, size-weighted merges, most-similar-first matching, batching, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_vlm import assert_forward_generate_round_trip, connector_vlm
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.connectors.tome import merge_tokens
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer

CONTEXT = ConnectorContext(vision_hidden_size=6, lm_config=LMConfig(hidden_size=10), block_cls=DecoderLayer)


def tome(**options: object):
    return build_connector(ConnectorConfig(name="tome", options=options), CONTEXT)


@pytest.mark.parametrize(
    "options", [{}, {"ratio": 0.5}, {"ratio": 0.33}, {"ratio": 1.0}, {"target": 1}, {"target": 3}, {"target": 100}]
)
@pytest.mark.parametrize("n_patches", [1, 2, 3, 7, 16, 50])
def test_num_tokens_matches_output(options: dict, n_patches: int) -> None:
    connector = tome(**options)
    out = connector(torch.randn(3, n_patches, 6))
    assert out.shape == (3, connector.num_tokens(n_patches), 10)


def test_counts_follow_ratio_and_target() -> None:
    assert tome().num_tokens(576) == 144
    assert tome(ratio=0.5).num_tokens(576) == 288
    assert tome(ratio=0.01).num_tokens(16) == 1
    assert tome(target=32).num_tokens(576) == 32
    assert tome(target=32).num_tokens(20) == 20


def test_size_weighted_sum_is_preserved() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 13, 5)
    size = torch.randint(1, 5, (2, 13, 1)).float()
    merged, merged_size = merge_tokens(x, 3, size)
    assert merged.shape == (2, 3, 5) and merged_size.shape == (2, 3, 1)
    assert torch.allclose((merged * merged_size).sum(1), (x * size).sum(1), atol=1e-5)
    assert torch.equal(merged_size.sum(1), size.sum(1))


def test_repeated_merges_give_exact_means_of_a_partition() -> None:
    torch.manual_seed(1)
    base = torch.randn(1, 16, 4)
    eps = 1e-3
    x = torch.cat([base, eps * torch.eye(16)[None]], dim=-1)  # a tiny one-hot tag says which patches each token holds
    merged, size = merge_tokens(x, 3)  # 16 -> 8 -> 4 -> 3: three rounds
    members = merged[0, :, 4:] * size[0] / eps  # (3, 16): 1 where the token holds the patch
    assert torch.allclose(members, members.round(), atol=1e-3)
    members = members.round()
    assert torch.equal(members.sum(0), torch.ones(16))  # every patch in exactly one token
    assert torch.equal(members.sum(1, keepdim=True), size[0])
    assert torch.allclose(merged[0, :, :4], members @ base[0] / size[0], atol=1e-5)
    assert size[0].max() > 2  # some token went through more than one merge


def test_most_similar_pair_merges_first() -> None:
    x = torch.eye(6)[None]  # A = slots 0, 2, 4; B = slots 1, 3, 5
    x[0, 5, 2] = 10.0  # token 5 points almost along token 2: cosine 0.995
    x[0, 4, 3] = 0.5  # token 4 leans towards token 3: cosine 0.45; all other pairs are orthogonal
    one, size = merge_tokens(x, 5)
    want = torch.stack([x[0, 0], x[0, 1], x[0, 3], x[0, 4], (x[0, 2] + x[0, 5]) / 2])
    assert torch.allclose(one[0], want) and size.flatten().tolist() == [1, 1, 1, 1, 2]
    two, size = merge_tokens(x, 4)
    want = torch.stack([x[0, 0], x[0, 1], (x[0, 3] + x[0, 4]) / 2, (x[0, 2] + x[0, 5]) / 2])
    assert torch.allclose(two[0], want) and size.flatten().tolist() == [1, 1, 2, 2]


def test_batched_equals_one_image_at_a_time_and_is_deterministic() -> None:
    torch.manual_seed(2)
    connector = tome(ratio=0.3)
    features = torch.randn(3, 25, 6)
    batched = connector(features)
    assert torch.equal(batched, connector(features))
    for i in range(3):
        assert torch.allclose(batched[i], connector(features[i : i + 1])[0], atol=1e-6)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^connector 'tome': connector\.options sets both target and ratio"):
        tome(target=4, ratio=0.5)
    for ratio in (0, 1.5):
        with pytest.raises(ConfigError, match=r"connector\.options\.ratio must be a number in \(0, 1\]"):
            tome(ratio=ratio)
    for ratio in ("half", True):
        with pytest.raises(ConfigError, match=r"connector\.options\.ratio: .* does not fit float \| None"):
            tome(ratio=ratio)
    with pytest.raises(ConfigError, match=r"connector\.options\.target must be >= 1, got 0"):
        tome(target=0)
    with pytest.raises(ConfigError, match=r"no option\(s\) targets"):
        tome(targets=4)


def test_gradients_reach_every_parameter_and_the_features() -> None:
    connector = tome()
    features = torch.randn(2, 16, 6, requires_grad=True)
    connector(features).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())
    assert features.grad is not None and bool((features.grad.abs().sum(-1) > 0).all())


def test_vlm_forward_generate_and_round_trip(tmp_path: Path) -> None:
    model = connector_vlm("tome", {"ratio": 0.25}, 32)
    k = model.tokens_per_image(32, 32)
    assert k == 4  # 16 patches, a quarter kept
    ids = torch.tensor([[1, 5] + [63] * k + [7, 8], [1, 6] + [63] * k + [9, 8]])
    pixels = torch.randn(2, 3, 32, 32)
    assert_forward_generate_round_trip(model, ids, pixels, tmp_path)
