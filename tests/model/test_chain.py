"""Chained model folders: only what changed is stored, a load follows the chain to bitwise the same weights without
running an initialiser, a missing or changed base is a CheckpointError naming it, and a whole save keeps a bf16
base's untouched tensors in bf16."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import vlbridge
from init_ops import InitialisingOps
from tiny_vlm import tiny_config, tiny_vlm
from vlbridge.errors import CheckpointError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.chain import BaseRef, save_chained, save_whole
from vlbridge.model.io import default_model_dir
from vlbridge.model.save import tied_keys
from vlbridge.model.vlm import VisionLanguageModel


def _stored(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)


def _bf16_base(path: Path) -> VisionLanguageModel:
    """A tiny VLM saved in bf16 at `path` (with the default's tokenizer, which loading needs); returned as loaded."""
    image_token_id = Tokenizer.from_dir(default_model_dir()).token_to_id("<image>")
    model = tiny_vlm(tiny_config(image_token_id=image_token_id), seed=1).to(torch.bfloat16)
    model.save_pretrained(path)
    Tokenizer.from_dir(default_model_dir()).save(path)
    return vlbridge.load(path)[0]


def _assert_same(model: VisionLanguageModel, path: Path) -> None:
    with InitialisingOps() as loading:
        loaded = vlbridge.load(path)[0].state_dict()
    assert loading.calls == []
    state = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_a_chain_stores_what_changed_and_loads_bitwise(tmp_path: Path) -> None:
    model = _bf16_base(tmp_path / "base")
    with torch.no_grad():
        for parameter in model.connector.parameters():
            parameter.add_(0.01)
    save_chained(tmp_path / "one", model.state_dict(), model.config, model.processor, [BaseRef(tmp_path / "base")])
    assert _stored(tmp_path / "one").keys() == {k for k in model.state_dict() if k.startswith("connector.")}
    _assert_same(model, tmp_path / "one")

    with torch.no_grad():  # a second link, on the first: one LM norm changes
        model.language_model.model.norm.weight.mul_(2)
    save_chained(tmp_path / "two", model.state_dict(), model.config, model.processor, [BaseRef(tmp_path / "one")])
    assert _stored(tmp_path / "two").keys() == {"language_model.model.norm.weight"}
    _assert_same(model, tmp_path / "two")

    save_whole(tmp_path / "whole", model.state_dict(), model.config, model.processor, tmp_path / "two")
    whole = _stored(tmp_path / "whole")
    assert whole.keys() == set(model.state_dict()) - tied_keys(model.config)
    trained = {k for k in whole if k.startswith("connector.")} | {"language_model.model.norm.weight"}
    assert all(whole[k].dtype == (torch.float32 if k in trained else torch.bfloat16) for k in whole)
    _assert_same(model, tmp_path / "whole")


def test_a_grown_vocabulary_stores_only_its_new_rows(tmp_path: Path) -> None:
    base = _bf16_base(tmp_path / "base")
    lm = base.config.language_model
    config = replace(base.config, language_model=replace(lm, vocab_size=lm.vocab_size + 2))
    torch.manual_seed(0)
    grown = VisionLanguageModel(config)
    state = base.state_dict()
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        state[key] = torch.cat([state[key], torch.randn(2, lm.hidden_size)])  # (V + 2, D)
    grown.load_state_dict(state)
    grown.processor = base.processor
    save_chained(tmp_path / "grown", grown.state_dict(), config, base.processor, [BaseRef(tmp_path / "base")])
    stored = _stored(tmp_path / "grown")
    assert stored["language_model.model.embed_tokens.weight"].shape == (2, lm.hidden_size)
    assert all(k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in stored)
    _assert_same(grown, tmp_path / "grown")


def test_a_missing_or_changed_base_is_a_checkpoint_error_naming_it(tmp_path: Path) -> None:
    model = _bf16_base(tmp_path / "base")
    with torch.no_grad():
        next(model.connector.parameters()).add_(1.0)
    save_chained(tmp_path / "stage", model.state_dict(), model.config, model.processor, [BaseRef(tmp_path / "base")])
    changed = vlbridge.load(tmp_path / "base")[0]
    with torch.no_grad():
        next(changed.vision_encoder.parameters()).add_(1.0)
    changed.save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match=f"base {tmp_path / 'base'}, whose files changed"):
        vlbridge.load(tmp_path / "stage")
    shutil.rmtree(tmp_path / "base")
    with pytest.raises(CheckpointError, match=f"base {tmp_path / 'base'}, which is missing"):
        vlbridge.load(tmp_path / "stage")


def test_a_malformed_base_list_is_a_checkpoint_error(tmp_path: Path) -> None:
    model = _bf16_base(tmp_path / "base")
    save_chained(tmp_path / "stage", model.state_dict(), model.config, model.processor, [BaseRef(tmp_path / "base")])
    config = json.loads((tmp_path / "stage" / "config.json").read_text())
    config["base"] = [{"kind": "model"}]
    (tmp_path / "stage" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="`base` list is not what vlbridge writes"):
        vlbridge.load(tmp_path / "stage")
