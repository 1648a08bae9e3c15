"""Oracle tests: DecoderLM against transformers' Llama/Qwen2 causal LMs, loaded from their own saved checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlbridge.lm import DecoderLM, decoder, lm_config_from_hf, lm_config_to_hf, lm_state_from_hf
from vlbridge.model.generate import GenerationConfig, Generator

transformers = pytest.importorskip("transformers")

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128)
FAMILIES = {
    # GQA 4 q heads / 2 kv heads, head_dim 24 != 64 / 4, untied, non-default rope_theta
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                                          rope_theta=5000.0, tie_word_embeddings=False)),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_attention_heads=4, num_key_value_heads=4,
                                                           tie_word_embeddings=True)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2,
                                                           tie_word_embeddings=True)),
}  # fmt: skip


def _save_hf(name: str, path: Path, seed: int = 0):
    """A random HF causal LM of family `name`, written with save_pretrained; its q/k/v biases made non-zero."""
    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**COMMON, **kwargs, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias"):
                param.normal_(std=0.5)
    model.save_pretrained(path)
    return model


def _load_ours(path: Path) -> DecoderLM:
    cfg = lm_config_from_hf(json.loads((path / "config.json").read_text()))
    model = DecoderLM(cfg).eval()
    model.load_state_dict(lm_state_from_hf(load_file(path / "model.safetensors"), cfg), strict=True)
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp(request.param)
    hf = _save_hf(request.param, path)
    return request.param, hf, _load_ours(path), path


def test_checkpoint_layout_is_what_we_expect(pair) -> None:
    name, hf, ours, path = pair
    saved = load_file(path / "model.safetensors")
    assert ("lm_head.weight" in saved) == (name == "llama_gqa")  # tied checkpoints omit lm_head
    assert set(ours.state_dict()) == set(hf.state_dict())
    has_bias = any(k.endswith("q_proj.bias") for k in saved)
    assert has_bias == name.startswith("qwen2")
    assert not any(k.endswith("o_proj.bias") for k in saved)
    if ours.config.tie_word_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_logits_match(pair) -> None:
    _, hf, ours, _ = pair
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= 1e-4


def test_logits_match_left_padded(pair) -> None:
    _, hf, ours, _ = pair
    ids = torch.randint(1, VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :7] = 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    keep = mask.bool()
    assert torch.isfinite(got).all()
    assert (got[keep] - ref[keep]).abs().max().item() <= 1e-4


def test_logits_match_right_padded_without_a_mask(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training batches are right-padded: plain causal attention serves them (no mask is built) and the real
    positions' logits still equal HF's."""
    _, hf, ours, _ = pair
    ids = torch.randint(1, VOCAB, (3, 11), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    monkeypatch.setattr(decoder, "padding_mask", lambda *a: pytest.fail("a right-padded batch built a mask"))
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    keep = mask.bool()
    assert (got[keep] - ref[keep]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("padded", [False, True])
def test_greedy_generation_matches(pair, padded: bool) -> None:
    _, hf, ours, _ = pair
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0
        ids = ids.masked_fill(mask == 0, 0)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    got = Generator(ours).generate(mask, GenerationConfig(max_new_tokens=20), ids)
    assert ref.shape == (2, 27)
    assert torch.equal(got, ref)


def test_repetition_penalty_and_sampling_match(pair) -> None:
    """Same processed logits and the same global RNG draw => HF's sampled tokens, and HF's penalised greedy."""
    _, hf, ours, _ = pair
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ref = hf.generate(ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.5, pad_token_id=0)
    got = Generator(ours).generate(mask, GenerationConfig(max_new_tokens=12, repetition_penalty=1.5), ids)
    assert torch.equal(got, ref)
    kwargs = dict(temperature=0.7, top_k=20, top_p=0.9)
    torch.manual_seed(5)
    ref = hf.generate(ids, max_new_tokens=12, do_sample=True, pad_token_id=0, **kwargs)
    torch.manual_seed(5)
    got = Generator(ours).generate(mask, GenerationConfig(max_new_tokens=12, do_sample=True, **kwargs), ids)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_tied"])
def test_config_to_hf_round_trip(name: str, tmp_path: Path) -> None:
    """Our config written as HF's builds an HF model that takes our weights strictly and gives our logits."""
    _save_hf(name, tmp_path)
    ours = _load_ours(tmp_path)
    hf_dict = lm_config_to_hf(ours.config)
    assert hf_dict["model_type"] == ("qwen2" if name.startswith("qwen2") else "llama")
    assert lm_config_from_hf(hf_dict) == ours.config
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_dict)).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-4
