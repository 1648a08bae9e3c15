"""KV cache invariants: cached decoding equals full recomputation; overflow is refused with a useful message."""

from __future__ import annotations

import pytest
import torch

from vlbridge.config import LMConfig
from vlbridge.errors import ContextOverflowError
from vlbridge.lm import DecoderLM, KVCache

CFG = LMConfig(
    vocab_size=61,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def model() -> DecoderLM:
    torch.manual_seed(0)
    lm = DecoderLM(CFG).eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(std=0.3)  # peaked logits: differences show
    return lm


@pytest.mark.parametrize("padded", [False, True])
def test_cached_decode_equals_full_recomputation(model: DecoderLM, padded: bool) -> None:
    b, prompt, steps = 3, 6, 8
    ids = torch.randint(0, CFG.vocab_size, (b, prompt + steps), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3] = 0
        mask[2, :5] = 0
    cache = model.new_cache(b, prompt + steps)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)  # (B, T, V)
        first = model.prefill(cache, mask[:, :prompt], input_ids=ids[:, :prompt])
        assert cache.length == prompt
        assert (first - full[:, prompt - 1]).abs().max() < 1e-4
        for i in range(prompt, prompt + steps):
            step = model.decode_step(cache, ids[:, i : i + 1], mask[:, : i + 1])
            assert (step - full[:, i]).abs().max() < 1e-4, f"step {i}"
    assert cache.length == prompt + steps


def test_chunked_prefill_equals_full(model: DecoderLM) -> None:
    """A multi-token forward after a cached prefix (no padding) needs an offset causal mask."""
    ids = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    cache = model.new_cache(2, 12)
    with torch.no_grad():
        full = model(ids)
        model(ids[:, :5], kv_cache=cache)
        rest = model(ids[:, 5:], kv_cache=cache)
    assert (rest - full[:, 5:]).abs().max() < 1e-4


def test_cache_writes_in_place_and_reports_memory() -> None:
    cache = KVCache(3, 2, 10, 4, 8, torch.bfloat16, "cpu")
    assert cache.nbytes == 2 * 3 * 2 * 4 * 10 * 8 * 2
    k = torch.randn(2, 4, 3, 8, dtype=torch.bfloat16)
    keys, values = cache.update(1, k, -k)
    assert keys.shape == (2, 4, 3, 8) and torch.equal(keys, k) and torch.equal(values, -k)
    assert keys.data_ptr() == cache.keys[1].data_ptr()  # a view of the preallocated buffer
    cache.advance(3)
    keys, _ = cache.update(1, k[:, :, :1], k[:, :, :1])
    assert keys.shape[2] == 4 and torch.equal(keys[:, :, 3], k[:, :, 0])


def test_overflow_message_names_sizes_and_fix() -> None:
    cache = KVCache(1, 1, 8, 1, 4, torch.float32, "cpu")
    cache.update(0, torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 6, 4))
    cache.advance(6)
    with pytest.raises(ContextOverflowError, match=r"needs 10 tokens.*at most 8.*max_new_tokens"):
        cache.update(0, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_model_refuses_cache_beyond_context_window(model: DecoderLM) -> None:
    with pytest.raises(ContextOverflowError, match=r"70 tokens.*window of 64.*by 6"):
        model.new_cache(1, 70)


def test_decoding_past_the_cache_raises(model: DecoderLM) -> None:
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        model.prefill(cache, torch.ones(1, 4, dtype=torch.long), input_ids=torch.zeros(1, 4, dtype=torch.long))
        with pytest.raises(ContextOverflowError):
            model.decode_step(cache, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))
