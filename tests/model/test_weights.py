"""Weights put in place from a file are aligned, so a model's logits do not depend on where its file's data starts."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vlbridge
from vlbridge.model.weights import ALIGNMENT, aligned


def test_a_tensor_off_the_alignment_is_copied_and_an_aligned_one_kept() -> None:
    buffer = torch.arange(64, dtype=torch.float32)
    shifted = buffer[1:17]  # starts 4 bytes past an aligned allocation
    assert shifted.data_ptr() % ALIGNMENT
    copy = aligned(shifted)
    assert copy.data_ptr() % ALIGNMENT == 0 and torch.equal(copy, shifted)
    assert aligned(buffer) is buffer


def test_loaded_weights_are_aligned_whatever_the_file_header_length(tmp_path: Path) -> None:
    model, _ = vlbridge.load(dtype="fp32")  # the embedded default, with its tokenizer, saved in float32
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    with safe_open(weights, "pt") as handle:  # what save_pretrained wrote (tied weights once)
        state = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118 (not iterable)
    logits = []
    for padding in ("", "x" * 13):  # a longer header moves every tensor's data by that many bytes in the file
        save_file(dict(state), weights, metadata={"format": "pt", "pad": padding} if padding else {"format": "pt"})
        loaded, _ = vlbridge.load(tmp_path)
        assert all(p.data_ptr() % ALIGNMENT == 0 for p in loaded.parameters())
        ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
        with torch.no_grad():
            logits.append(loaded.language_model(input_ids=ids))
    assert torch.equal(logits[0], logits[1])
