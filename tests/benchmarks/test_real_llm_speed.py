"""benchmarks/real_llm_speed.py's roofline: the weight bytes one decode step reads, per dtype, counted once each."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.real_llm_speed import decode_bytes  # noqa: E402

from tiny_vlm import TINY_LM  # noqa: E402
from vlbridge.lm import DecoderLM  # noqa: E402
from vlbridge.lm.int8 import quantize_linears  # noqa: E402


def _model(tied: bool) -> SimpleNamespace:
    return SimpleNamespace(language_model=DecoderLM(dataclasses.replace(TINY_LM, tie_word_embeddings=tied)))


@pytest.mark.parametrize("tied", [False, True])
def test_float_decode_reads_every_weight_once_but_the_untied_embedding(tied: bool) -> None:
    model = _model(tied)
    lm = model.language_model
    embedding = lm.model.embed_tokens.weight.numel()
    params = sum(p.numel() for p in lm.parameters())  # a tied head is the embedding: listed once
    fp32 = decode_bytes(model)
    assert fp32 == 4 * (params if tied else params - embedding)
    lm.to(torch.bfloat16)
    assert decode_bytes(model) == fp32 // 2


def test_int8_decode_reads_int8_weights_with_their_scales_and_float_norms() -> None:
    model = _model(tied=True)
    lm = model.language_model
    quantize_linears(lm)
    int8 = sum(b.numel() for b in lm.buffers() if b.dtype == torch.int8)
    scales = sum(b.numel() for n, b in lm.named_buffers() if n.endswith("weight_scale"))
    norms = sum(p.numel() for n, p in lm.named_parameters() if "norm" in n)
    assert int8 and scales and norms
    assert decode_bytes(model) == int8 + 4 * (scales + norms)
