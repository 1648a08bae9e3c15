"""Lean loading: `vlbridge.load` builds on the meta device and writes each weight once, straight from the file.

The counter watches every aten op that fills a tensor with initial values (what torch.nn.init and the random tensor
factories run) and keeps those that wrote real memory; a load must run none, while an ordinary build runs many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import vlbridge
from init_ops import InitialisingOps
from tiny_vlm import tiny_config, tiny_vlm
from vlbridge import files
from vlbridge.config import ModelConfig
from vlbridge.connectors import available
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model import io
from vlbridge.model.io import default_model_dir
from vlbridge.model.vlm import VisionLanguageModel


def _config(connector: str = "mlp", **fields: Any) -> ModelConfig:
    """A tiny config whose image token id is the default tokenizer's (mini: one pre-fusion layer, initialised from the
    LM's first, which a load must not copy over the file's)."""
    options = {"prefusion_layers": 1, "prefusion_init": "lm"} if connector == "mini" else None
    image_token_id = Tokenizer.from_dir(default_model_dir()).token_to_id("<image>")
    return tiny_config(connector, options, image_token_id=image_token_id, **fields)


def _save(model: VisionLanguageModel, path: Path) -> None:
    """Save `model` with the embedded default's tokenizer (loading needs one; its vocabulary does not matter here)."""
    model.save_pretrained(path)
    Tokenizer.from_dir(default_model_dir()).save(path)


@pytest.mark.parametrize("connector", available())
def test_a_load_calls_no_initialiser_and_gives_the_saved_weights(connector: str, tmp_path: Path) -> None:
    with InitialisingOps() as built:
        saved = tiny_vlm(_config(connector), seed=3)
    assert "normal_" in built.calls, "the counter sees the initialisers of an ordinary build"
    with torch.no_grad():  # weights no initialiser gives: zero gates, ones norms, mini's copies of LM layers all move
        for i, parameter in enumerate(saved.parameters()):
            parameter.add_(0.01 * (i + 1))
    _save(saved, tmp_path)
    with InitialisingOps() as loading:
        model, _ = vlbridge.load(tmp_path)
    assert loading.calls == []
    loaded = model.state_dict()
    assert not any(t.is_meta for t in loaded.values())
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_a_tied_head_is_the_loaded_embedding(tmp_path: Path) -> None:
    _save(tiny_vlm(_config(lm={"tie_word_embeddings": True})), tmp_path)
    lm = vlbridge.load(tmp_path)[0].language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight


def test_bf16_weights_are_the_files_in_bf16(tmp_path: Path) -> None:
    saved = tiny_vlm(_config())
    _save(saved, tmp_path)
    model, _ = vlbridge.load(tmp_path, dtype="bf16")
    loaded = model.state_dict()
    for name, tensor in saved.state_dict().items():
        assert loaded[name].dtype == torch.bfloat16 and torch.equal(loaded[name], tensor.to(torch.bfloat16)), name


def test_a_converting_load_maps_the_file_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 load of an fp32 file reads it through one mapping per chunk of about CHUNK_BYTES (largest tensors
    first), so the file's pages go as each chunk is converted: many mappings when chunks are small, same weights."""
    saved = tiny_vlm(_config())
    _save(saved, tmp_path)
    whole, _ = vlbridge.load(tmp_path, dtype="bf16")
    opened = []
    monkeypatch.setattr(io, "open_safetensors", lambda file: opened.append(file) or files.open_safetensors(file))
    monkeypatch.setattr(io, "CHUNK_BYTES", 4096)
    chunked, _ = vlbridge.load(tmp_path, dtype="bf16")
    assert len(opened) > 10
    expected = whole.state_dict()
    assert all(torch.equal(t, expected[n]) and t.dtype == torch.bfloat16 for n, t in chunked.state_dict().items())
    params = dict(saved.state_dict())
    chunks = io._chunks(sorted(params), params)
    assert sorted(n for c in chunks for n in c) == sorted(params)
    sizes = [[params[n].numel() * params[n].element_size() for n in c] for c in chunks]
    assert all(len(c) == 1 or sum(c) <= 4096 for c in sizes)
    assert [max(c) for c in sizes] == sorted((max(c) for c in sizes), reverse=True)  # the largest tensors first


def test_a_text_only_load_reads_no_vision_weight(tmp_path: Path) -> None:
    saved = tiny_vlm(_config())
    _save(saved, tmp_path)
    model, _ = vlbridge.load(tmp_path, vision=False)
    assert not model.has_vision
    assert torch.equal(model.language_model.lm_head.weight, saved.language_model.lm_head.weight)
    assert isinstance(model, VisionLanguageModel)


def test_int8_loads_call_no_initialiser(tmp_path: Path) -> None:
    _save(tiny_vlm(_config()), tmp_path / "float")
    with InitialisingOps() as quantizing:
        quantized, _ = vlbridge.load(tmp_path / "float", quantize="int8")
    assert quantizing.calls == []
    quantized.save_pretrained(tmp_path / "int8")
    with InitialisingOps() as loading:
        again, _ = vlbridge.load(tmp_path / "int8")
    assert loading.calls == []
    loaded = again.state_dict()
    for name, tensor in quantized.state_dict().items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
