"""Weights are used where the file maps them, never copied on load; files vlbridge writes map them aligned, so their
logits do not depend on the header's length, and a file written off the boundary loads as fast, equal to 1e-5."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vlbridge
from vlbridge.atomic import ALIGNMENT


def _logits(path: Path) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loaded, _ = vlbridge.load(path)
    with torch.no_grad():
        return loaded.language_model(input_ids=torch.tensor([[1, 5, 9, 13, 17, 21]])), list(loaded.parameters())


def test_weights_are_mapped_in_place_and_vlbridge_files_map_them_aligned(tmp_path: Path) -> None:
    model, _ = vlbridge.load(dtype="fp32")  # the embedded default, with its tokenizer, saved in float32
    model.save_pretrained(tmp_path)  # every tensor's size is a multiple of 64 bytes
    ours, params = _logits(tmp_path)
    assert len(params) > 20 and all(p.data_ptr() % ALIGNMENT == 0 for p in params)
    weights = tmp_path / "model.safetensors"
    with safe_open(weights, "pt") as handle:
        state = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118 (not iterable)
    save_file(
        state, weights, metadata={"format": "pt", "pad": "x" * 13}
    )  # as other tools may: the data off the boundary
    theirs, params = _logits(tmp_path)
    assert all(p.data_ptr() % ALIGNMENT for p in params if p.dtype == torch.float32)  # used in place: not copied
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)  # MKL's unaligned path differs in the last bits
