"""DecoderLM behaviour that needs no oracle: hooks, heads, training, init, RoPE (its kernels: test_cpu_kernels.py)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tiny_vlm import TINY_LM
from vlbridge.errors import ConfigError
from vlbridge.lm import DecoderLM, RotaryEmbedding, apply_rotary
from vlbridge.lm.decoder import DecoderLayer

CFG = TINY_LM


@pytest.fixture(scope="module")
def model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(CFG).eval()


def test_hook_before_layer_zero_equals_shifted_embeddings(model: DecoderLM) -> None:
    ids = torch.randint(0, CFG.vocab_size, (2, 5))
    delta = torch.randn(2, 5, CFG.hidden_size)
    with torch.no_grad():
        hooked = model(ids, hooks={0: lambda h: h + delta})
        shifted = model(inputs_embeds=model.embed(ids) + delta)
        plain = model(ids)
    torch.testing.assert_close(hooked, shifted)
    assert (hooked - plain).abs().max() > 1e-3


def test_hooks_reach_the_named_layer(model: DecoderLM) -> None:
    seen: list[int] = []
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), hooks={1: lambda h: seen.append(h.shape[1]) or h})
    assert seen == [3]


def test_logits_to_keep_and_hidden(model: DecoderLM) -> None:
    ids = torch.randint(0, CFG.vocab_size, (2, 6))
    with torch.no_grad():
        full = model(ids)
        last = model(ids, logits_to_keep=2)
        hidden = model(ids, return_hidden=True)
    assert last.shape == (2, 2, CFG.vocab_size) and hidden.shape == (2, 6, CFG.hidden_size)
    torch.testing.assert_close(last, full[:, -2:])
    torch.testing.assert_close(model.lm_head(hidden), full)


def test_position_ids_default_from_mask(model: DecoderLM) -> None:
    """A left-padded row gives its real tokens the logits of the same prompt unpadded."""
    ids = torch.randint(1, CFG.vocab_size, (1, 4))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(ids), rtol=1e-5, atol=1e-5)


def test_training_step_reduces_loss() -> None:
    torch.manual_seed(1)
    lm = DecoderLM(CFG)
    ids = torch.randint(0, CFG.vocab_size, (4, 8))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        logits = lm(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, CFG.vocab_size), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_tied_head_shares_the_embedding() -> None:
    from dataclasses import replace

    lm = DecoderLM(replace(CFG, tie_word_embeddings=True))
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    assert "lm_head.weight" in lm.state_dict()
    assert DecoderLM.block_cls is DecoderLayer and lm.hidden_size == CFG.hidden_size


@pytest.mark.parametrize("std", [0.02, 0.0625])
def test_initializer_range_sets_the_weight_std(std: float) -> None:
    from dataclasses import replace

    torch.manual_seed(0)
    lm = DecoderLM(replace(CFG, hidden_size=64, intermediate_size=128, initializer_range=std))
    for name, p in lm.named_parameters():
        if p.dim() == 2:
            assert p.std().item() == pytest.approx(std, rel=0.1), name
        elif name.endswith("bias"):
            assert not p.any(), name


def test_bad_head_counts_raise() -> None:
    from dataclasses import replace

    with pytest.raises(ConfigError, match="multiple"):
        DecoderLM(replace(CFG, num_key_value_heads=3))


def test_rope_matches_rotate_half_formula() -> None:
    rope = RotaryEmbedding(head_dim=8, theta=100.0, initial_length=4)
    pos = torch.tensor([[0, 5, 9]])
    cos, sin = rope(pos, torch.float32)  # grows its table past the initial 4 positions
    x = torch.randn(1, 2, 3, 8)
    angles = pos[0, :, None].float() * (1.0 / 100.0 ** (torch.arange(0, 8, 2).float() / 8))  # (T, 4)
    c, s = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
    rotated = torch.cat((-x[..., 4:], x[..., :4]), dim=-1)
    torch.testing.assert_close(apply_rotary(x, cos, sin), x * c + rotated * s)
    assert torch.equal(cos[0, 0], torch.ones(8))


def test_rope_spans_are_views_of_the_gathered_values_and_serve_autograd_after_inference() -> None:
    """Consecutive positions (no padding) are slices of the table instead of a gather; a table first built under
    inference mode (generation) still serves a later forward whose autograd saves it (training)."""
    rope = RotaryEmbedding(head_dim=8, theta=100.0, initial_length=4)
    with torch.inference_mode():
        span = rope.span(3, 6, torch.float32, torch.device("cpu"))  # grows the table from 4 positions
    gathered = rope(torch.arange(3, 9)[None], torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(span, gathered, strict=True)) and span[0].shape == (1, 6, 8)
    x = torch.randn(1, 2, 6, 8, requires_grad=True)
    apply_rotary(x, *rope.span(3, 6, torch.float32, torch.device("cpu"))).sum().backward()
    assert x.grad is not None
