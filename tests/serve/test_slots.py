"""The engine's slot cache: one batched decode step over rows of different lengths (each row writing at its own
position, the shorter rows' later keys masked) gives each row the logits it gets decoding alone, through the native
decode kernels where they run and through the eager layers."""

from __future__ import annotations

import pytest
import torch

from tiny_vlm import TINY_LM
from vlbridge.lm import DecoderLM, native
from vlbridge.serve.slots import SlotCache


@pytest.mark.parametrize("kernels", [False, True])
def test_a_ragged_step_equals_each_row_alone(kernels: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernels and not native.available():
        pytest.skip("vlbridge's native kernels do not run on this CPU")
    if not kernels:
        monkeypatch.setattr(native, "available", lambda: False)
    calls: list[int] = []
    stack = native.decode_stack
    monkeypatch.setattr(native, "decode_stack", lambda *a: calls.append(1) or stack(*a))
    torch.manual_seed(0)
    lm = DecoderLM(TINY_LM).eval()
    prompts = [torch.randint(0, TINY_LM.vocab_size, (1, n)) for n in (5, 2, 7)]
    tokens = torch.tensor([[3], [4], [5]])
    slots = SlotCache(lm, 3, 12)
    with torch.inference_mode():
        alone = []
        for i, ids in enumerate(prompts):
            lm.prefill(slots.row(i), torch.ones_like(ids), input_ids=ids)
            cache = lm.new_cache(1, 12)
            lm.prefill(cache, torch.ones_like(ids), input_ids=ids)
            mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
            alone.append(lm.decode_step(cache, tokens[i : i + 1], mask))
        positions = torch.tensor([ids.shape[1] for ids in prompts])
        mask = (torch.arange(int(positions.max()) + 1)[None, :] <= positions[:, None]).long()  # as the engine's
        batched = lm.decode_step(slots.step(positions), tokens, mask)
    expected = torch.cat(alone)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert len(calls) == (4 if kernels else 0)  # each row's single step alone, then the ragged step
