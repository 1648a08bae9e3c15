"""LoRA through peft: only adapters train; merging gives a plain checkpoint with the original keys and the same
logits as the adapter model; the saved adapter loads back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlbridge.config import LMConfig
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.lm.decoder import DecoderLM
from vlbridge.train.lora import (
    adapter_state_dict,
    apply_lora,
    has_lora,
    load_adapter,
    merge_lora,
    save_adapter,
    unload_lora,
)
from vlbridge.train.recipe import LoraRecipe

pytest.importorskip("peft")

CFG = LMConfig(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
MERGE_TOL = 1e-5  # float32 rounding: x (W + s B A)^T vs x W^T + s (x A^T) B^T


def _lm(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(CFG)


def _train(lm: DecoderLM, steps: int = 3) -> None:
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(0, CFG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        logits = lm(input_ids=ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, CFG.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_only_adapters_train_on_every_target() -> None:
    lm = _lm()
    base = {k: v.clone() for k, v in lm.state_dict().items()}
    assert apply_lora(lm, LoraRecipe(r=4, alpha=8)) == 7 * CFG.num_hidden_layers
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 7 * CFG.num_hidden_layers  # A and B per wrapped layer
    _train(lm)
    state = lm.state_dict()
    for key, value in base.items():  # base weights now live under `.base_layer.` for wrapped layers
        wrapped = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[wrapped if wrapped in state else key], value), key
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)  # B left zero-init: it trained


def test_merge_gives_original_keys_and_equal_logits() -> None:
    lm = _lm()
    keys = list(lm.state_dict())
    apply_lora(lm, LoraRecipe(r=4, alpha=16, targets=["q_proj", "v_proj", "down_proj"]))
    _train(lm)
    ids = torch.randint(0, CFG.vocab_size, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapter_logits = lm(input_ids=ids)
        merge_lora(lm)
        merged_logits = lm(input_ids=ids)
    assert list(lm.state_dict()) == keys and not has_lora(lm)
    assert not hasattr(lm, "peft_config")
    assert (adapter_logits - merged_logits).abs().max() <= MERGE_TOL
    plain = DecoderLM(CFG)
    plain.load_state_dict(lm.state_dict(), strict=True)  # a plain checkpoint: loads strictly into a fresh model
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids), merged_logits)


def test_unload_restores_the_base_exactly() -> None:
    lm = _lm()
    base = {k: v.clone() for k, v in lm.state_dict().items()}
    apply_lora(lm, LoraRecipe(r=2, alpha=2))
    _train(lm)
    unload_lora(lm)
    assert lm.state_dict().keys() == base.keys()
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in base.items())


def test_adapter_round_trip(tmp_path: Path) -> None:
    lm = _lm()
    apply_lora(lm, LoraRecipe(r=4, alpha=8, dropout=0.0))
    _train(lm)
    cfg = LoraRecipe(r=4, alpha=8, dropout=0.0)
    save_adapter(lm, tmp_path, cfg)
    assert all(k.startswith("base_model.model.model.layers.") for k in adapter_state_dict(lm))
    ids = torch.randint(0, CFG.vocab_size, (1, 7))
    with torch.no_grad():
        want = lm(input_ids=ids)
    fresh = _lm()  # same base weights (same seed)
    assert load_adapter(fresh, tmp_path) == cfg
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids), want)
    with pytest.raises(ConfigError, match="already carries"):
        apply_lora(fresh, cfg)
    with pytest.raises(CheckpointError, match=r"no adapter_config\.json"):
        load_adapter(_lm(), tmp_path / "nothing")


@pytest.mark.parametrize(
    ("name", "content", "fix"),
    [
        ("adapter_config.json", b"{ cut sho", r"not valid JSON"),
        ("adapter_config.json", b'{"r": 4}', r"lacks lora_alpha, lora_dropout, target_modules"),
        ("adapter_model.safetensors", b"\x00" * 7, r"truncated or corrupt"),
    ],
)
def test_a_damaged_adapter_is_a_checkpoint_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, fix: str
) -> None:
    lm = _lm()
    apply_lora(lm, LoraRecipe(r=4, alpha=8, dropout=0.0))
    save_adapter(lm, tmp_path, LoraRecipe(r=4, alpha=8, dropout=0.0))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=fix) as caught:
        load_adapter(_lm(), tmp_path)
    assert str(tmp_path / name) in str(caught.value)
