"""`vlbridge.load(..., quantize="int8")` and int8 checkpoints: logits close to float, the embedded default's greedy
answer unchanged, and a saved int8 checkpoint loading as int8 without a float copy or re-quantising."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import vlbridge
from vlbridge.atomic import ALIGNMENT
from vlbridge.errors import ConfigError
from vlbridge.lm import int8
from vlbridge.model.io import default_model_dir
from vlbridge.vision.processor import load_image

LOGIT_TOLERANCE = 0.02
"""int8 logits stay within this fraction of the largest float logit (max |diff| / max |logit|); the embedded default
measured 0.009."""


def _sample_inputs(processor):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nDescribe the image briefly."}], add_generation_prompt=True
    )
    return processor(text=prompt, images=[load_image(default_model_dir() / "sample.png")], return_tensors="pt")


@pytest.fixture(scope="module")
def default_pair():
    return vlbridge.load(), vlbridge.load(quantize="int8")


def test_int8_logits_close_to_float_and_greedy_answer_unchanged(default_pair) -> None:
    (model, processor), (quantized, _) = default_pair
    lm = quantized.language_model
    assert not any(isinstance(m, nn.Linear) for m in lm.modules())
    assert lm.lm_head.weight.dtype == torch.int8 and quantized.config.quantization == "int8"
    inputs = _sample_inputs(processor)
    with torch.no_grad():
        logits, q_logits = model(**inputs).logits, quantized(**inputs).logits
    assert (q_logits - logits).abs().max() <= LOGIT_TOLERANCE * logits.abs().max()
    float_ids = model.generate(**inputs, max_new_tokens=64, do_sample=False)
    int8_ids = quantized.generate(**inputs, max_new_tokens=64, do_sample=False)
    assert torch.equal(int8_ids, float_ids)
    assert "The text says GO" in processor.decode(int8_ids[0, inputs["input_ids"].shape[1] :])


def test_int8_checkpoint_round_trip_loads_int8_without_requantising(default_pair, tmp_path: Path, monkeypatch) -> None:
    quantized, processor = default_pair[1]
    quantized.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["quantization"] == "int8"
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        stored = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118
    assert stored["language_model.lm_head.weight"] == "I8"  # the tied head holds the one int8 table
    assert stored["language_model.model.layers.0.mlp.down_proj.weight"] == "I8"
    assert not any("embed_tokens" in key for key in stored)  # the embeddings read the head's table: no float copy

    def no_quantising(weight):
        raise AssertionError("a saved int8 checkpoint must not be quantised again")

    monkeypatch.setattr(int8, "quantize_weight", no_quantising)
    again, _ = vlbridge.load(tmp_path)
    also, _ = vlbridge.load(tmp_path, quantize="int8")
    proj_weights = [k for k, v in again.language_model.state_dict().items() if k.endswith("proj.weight")]
    assert proj_weights and all(again.language_model.state_dict()[k].dtype == torch.int8 for k in proj_weights)
    inputs = _sample_inputs(processor)
    with torch.no_grad():
        expected = quantized(**inputs).logits
        assert torch.equal(again(**inputs).logits, expected)
        assert torch.equal(also(**inputs).logits, expected)
    text_only, _ = vlbridge.load(tmp_path, vision=False)
    assert not text_only.has_vision and text_only.language_model.lm_head.weight.dtype == torch.int8
    lm = again.language_model
    assert isinstance(lm.model.embed_tokens, int8.Int8Embedding) and lm.model.embed_tokens.weight is lm.lm_head.weight
    layers = [m for m in lm.modules() if isinstance(m, int8.Int8Linear)]
    assert all(
        m.weight.data_ptr() % ALIGNMENT == 0 for m in layers
    )  # int8.align_weights: PyTorch's int8 kernel reads them


def test_int8_checkpoint_with_a_float_embedding_table_still_loads(default_pair, tmp_path: Path) -> None:
    """A tied int8 checkpoint written before the embeddings read the head's table stored the float table too: it is
    redundant (the head is that table, quantised) and is ignored, giving the same model."""
    (model, processor), (quantized, _) = default_pair
    quantized.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    with safe_open(weights, "pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    state["language_model.model.embed_tokens.weight"] = model.language_model.model.embed_tokens.weight.detach()
    save_file(state, weights, metadata={"format": "pt"})
    old, _ = vlbridge.load(tmp_path)
    inputs = _sample_inputs(processor)
    with torch.no_grad():
        assert torch.equal(old(**inputs).logits, quantized(**inputs).logits)


def test_int8_under_bf16_keeps_the_greedy_answer(default_pair) -> None:
    model, processor = default_pair[0]
    bf16, _ = vlbridge.load(quantize="int8", dtype="bf16")
    lm = bf16.language_model
    assert lm.model.norm.weight.dtype == torch.bfloat16 and lm.embed(torch.tensor([[1, 2]])).dtype == torch.bfloat16
    inputs = _sample_inputs(processor)
    expected = model.generate(**inputs, max_new_tokens=64, do_sample=False)
    assert torch.equal(bf16.generate(**inputs, max_new_tokens=64, do_sample=False), expected)


def test_unknown_quantization_is_refused_before_loading() -> None:
    with pytest.raises(ConfigError, match="unknown quantization 'int4'; use one of int8"):
        vlbridge.load("/no/such/dir", quantize="int4")
