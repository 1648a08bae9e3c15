"""Decode steps through `native.decode_stack` equal the eager layers' (float32, bf16 and int8 weights, Qwen2's
biases, grouped and full attention, one to six rows, left-padded batches), write the same KV cache, and every
input outside what the kernel computes takes the eager layers instead."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import nn

from vlbridge.config import LMConfig
from vlbridge.errors import ContextOverflowError
from vlbridge.lm import DecoderLM, fused_decode, native
from vlbridge.lm.int8 import quantize_linears

pytestmark = pytest.mark.skipif(
    native._cpu_supported() is not None, reason="the fused decode runs on x86 CPUs with AVX2"
)

CFG = LMConfig(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=120,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)
"""head_dim 16 (a multiple of 8, as the kernel needs), GQA 4/2, an MLP width that is not a multiple of 32."""


def decode(
    lm: DecoderLM, prompt: torch.Tensor, steps: int, **kwargs: object
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits (steps, B, V) of greedy decode steps after `prompt`, and the KV cache's keys afterwards."""
    b, t = prompt.shape
    with torch.inference_mode():
        cache = lm.new_cache(b, t + steps)
        mask = torch.ones(b, t + steps, dtype=torch.long)
        token = lm.prefill(cache, mask[:, :t], input_ids=prompt).argmax(-1, keepdim=True)
        out = []
        for _ in range(steps):
            out.append(lm.decode_step(cache, token, mask[:, : cache.length + 1], **kwargs))
            token = out[-1].argmax(-1, keepdim=True)
    return torch.stack(out), [k[:, :, : cache.length].clone() for k in cache.keys]


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one per native.decode_stack call."""
    calls: list[int] = []
    stack = native.decode_stack
    monkeypatch.setattr(native, "decode_stack", lambda *a: calls.append(1) or stack(*a))
    return calls


def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_decode.native, "available", lambda: False)


def bias_lm() -> DecoderLM:
    lm = DecoderLM(dataclasses.replace(CFG, attention_bias=True)).eval()
    with torch.no_grad():
        for name, parameter in lm.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    return lm


def int8_lm() -> DecoderLM:
    lm = DecoderLM(CFG).eval()
    quantize_linears(lm)
    lm.tie_weights()
    return lm


MODELS: dict[str, tuple[Callable[[], DecoderLM], float]] = {
    "fp32": (lambda: DecoderLM(CFG).eval(), 1e-5),
    "qwen2 biases": (bias_lm, 1e-5),
    "full attention": (lambda: DecoderLM(dataclasses.replace(CFG, num_key_value_heads=4)).eval(), 1e-5),
    "int8": (int8_lm, 1e-5),
    "bf16": (lambda: DecoderLM(CFG).eval().to(torch.bfloat16), 2e-2),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("rows", [1, 3, 6])
def test_fused_steps_equal_the_eager_layers(name: str, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tolerances: float32 rounding (1e-5 of the logits' scale); bf16: the kernel keeps the residual in float32
    between layers where the eager layers round it to bf16 after every operation."""
    build, tolerance = MODELS[name]
    torch.manual_seed(rows)
    lm = build()
    prompt = torch.randint(0, CFG.vocab_size, (rows, 7))
    calls = counting(monkeypatch)
    fused, fused_keys = decode(lm, prompt, 5)
    assert len(calls) == 5
    with monkeypatch.context() as patch:
        eager(patch)
        expected, keys = decode(lm, prompt, 5)
    assert len(calls) == 5
    scale = float(expected.float().abs().max())
    torch.testing.assert_close(fused.float(), expected.float(), rtol=0, atol=tolerance * scale)
    for got, want in zip(fused_keys, keys, strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=tolerance * float(want.abs().max()) + 1e-6)


class Wrapped(nn.Module):
    """A projection of another type (as a LoRA wrapper is): the kernel cannot read it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_what_the_kernel_does_not_compute_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    lm = DecoderLM(CFG).eval()
    prompt = torch.randint(0, CFG.vocab_size, (2, 5))
    calls = counting(monkeypatch)
    decode(lm, prompt, 2, hooks={1: lambda h: h})  # hooks between layers (gated cross-attention)
    cache = lm.new_cache(2, 8)  # autograd on
    lm.prefill(cache, torch.ones(2, 5, dtype=torch.long), input_ids=prompt)
    lm.decode_step(cache, prompt[:, :1], torch.ones(2, 6, dtype=torch.long))
    assert calls == []
    lm.model.layers[1].mlp.up_proj = Wrapped(lm.model.layers[1].mlp.up_proj)
    decode(lm, prompt, 2)
    other = DecoderLM(dataclasses.replace(CFG, hidden_act="gelu_pytorch_tanh")).eval()
    decode(other, prompt, 2)
    assert calls == []


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_a_left_padded_batch_takes_the_kernel_with_its_key_mask(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of different prompt lengths, left-padded: the padding keys stay unattended and RoPE runs at each row's
    own positions, as in the eager layers."""
    torch.manual_seed(1)
    lm = MODELS[name][0]()
    prompt = torch.randint(0, CFG.vocab_size, (3, 6))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :3], mask[1, :1] = 0, 0

    def padded_steps() -> torch.Tensor:
        with torch.inference_mode():
            cache = lm.new_cache(3, 10)
            token = lm.prefill(cache, mask[:, :6], input_ids=prompt).argmax(-1, keepdim=True)
            out = []
            for _ in range(4):
                out.append(lm.decode_step(cache, token, mask[:, : cache.length + 1]))
                token = out[-1].argmax(-1, keepdim=True)
        return torch.stack(out)

    calls = counting(monkeypatch)
    fused = padded_steps()
    assert len(calls) == 4
    eager(monkeypatch)
    expected = padded_steps()
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_changed_weights_are_read_not_a_stale_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each layer keeps its pointer table between steps; replacing a weight, writing one in place and casting the
    model must all be seen by the next step."""
    torch.manual_seed(0)
    lm = DecoderLM(CFG).eval()
    prompt = torch.randint(0, CFG.vocab_size, (1, 6))
    decode(lm, prompt, 2)
    assert fused_decode.PLAN in vars(lm.model.layers[0])
    with torch.no_grad():
        lm.model.layers[0].mlp.down_proj.weight = nn.Parameter(torch.randn(CFG.hidden_size, CFG.intermediate_size))
        lm.model.layers[2].self_attn.q_proj.weight.mul_(3)
    replaced, _ = decode(lm, prompt, 3)
    with monkeypatch.context() as patch:
        eager(patch)
        expected, _ = decode(lm, prompt, 3)
    torch.testing.assert_close(replaced, expected, rtol=1e-5, atol=1e-5)
    lm.to(torch.bfloat16)
    cast, _ = decode(lm, prompt, 3)
    eager(monkeypatch)
    expected, _ = decode(lm, prompt, 3)
    torch.testing.assert_close(cast.float(), expected.float(), rtol=0, atol=2e-2 * float(expected.float().abs().max()))


def test_a_full_cache_is_refused_before_anything_is_written() -> None:
    lm = DecoderLM(CFG).eval()
    with torch.inference_mode():
        cache = lm.new_cache(1, 4)
        mask = torch.ones(1, 5, dtype=torch.long)
        lm.prefill(cache, mask[:, :4], input_ids=torch.zeros(1, 4, dtype=torch.long))
        before = [k.clone() for k in cache.keys]
        with pytest.raises(ContextOverflowError, match="KV cache holds at most 4"):
            lm.decode_step(cache, torch.zeros(1, 1, dtype=torch.long), mask)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys, strict=True))
