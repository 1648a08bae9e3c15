"""Oracle: the adapter vlbridge saves loads with PEFT onto transformers' Llama with the same base weights, and
gives the same logits as vlbridge's adapter model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlbridge.config import LMConfig
from vlbridge.lm import DecoderLM, lm_config_to_hf
from vlbridge.train.lora import apply_lora, save_adapter
from vlbridge.train.recipe import LoraRecipe

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecation notice inside PEFT
def test_saved_adapter_matches_peft_on_transformers(tmp_path: Path) -> None:
    cfg = LMConfig(
        vocab_size=53,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    lm = DecoderLM(cfg).eval()
    hf_config = transformers.LlamaConfig(**{k: v for k, v in lm_config_to_hf(cfg).items() if k != "model_type"})
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(lm.state_dict(), strict=True)
    lora = LoraRecipe(r=4, alpha=8)
    apply_lora(lm, lora)
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.2)  # B starts at zero; make the adapter matter
    save_adapter(lm, tmp_path, lora)
    hf_lora = peft.PeftModel.from_pretrained(hf, tmp_path).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = lm(input_ids=ids), hf_lora(input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-4
