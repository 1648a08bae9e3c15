"""The file-hash cache: a second load of a chained folder reads none of its bases' bytes again (in the same process or
a new one), while any write to a base file forces a re-hash, so a changed base is still a CheckpointError; the cache
lives where the environment says, and a damaged cache file is ignored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import vlbridge
from tiny_vlm import tiny_config, tiny_vlm
from vlbridge.cache_dir import CACHE_ENV
from vlbridge.errors import CheckpointError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model import file_hash
from vlbridge.model.chain import BaseRef, save_chained
from vlbridge.model.io import default_model_dir


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files `hash_file` reads, in order (the in-process memo emptied first)."""
    calls: list[Path] = []
    real = file_hash.hash_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(file_hash, "hash_file", counting)
    monkeypatch.setattr(file_hash, "_MEMO", {})
    return calls


def _chained(tmp_path: Path) -> Path:
    """A tiny model saved whole at tmp_path/base, and chained on it (its connector changed) at tmp_path/stage."""
    tokenizer = Tokenizer.from_dir(default_model_dir())
    model = tiny_vlm(tiny_config(image_token_id=tokenizer.token_to_id("<image>")), seed=2)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save(tmp_path / "base")
    model = vlbridge.load(tmp_path / "base")[0]
    with torch.no_grad():
        next(model.connector.parameters()).add_(1.0)
    save_chained(tmp_path / "stage", model.state_dict(), model.config, model.processor, [BaseRef(tmp_path / "base")])
    return tmp_path / "stage"


def test_a_second_load_reads_no_base_bytes_again(
    tmp_path: Path, hashed: list[Path], monkeypatch: pytest.MonkeyPatch, _file_hash_cache: Path
) -> None:
    stage = _chained(tmp_path)
    assert {p.name for p in hashed} == {"config.json", "model.safetensors"}  # the base's, hashed once at save
    hashed.clear()
    vlbridge.load(stage)
    assert hashed == []  # the in-process memo
    monkeypatch.setattr(file_hash, "_MEMO", {})  # as a new process: the disk cache alone
    vlbridge.load(stage)
    assert hashed == []
    assert (_file_hash_cache / file_hash.CACHE_FILE).is_file()


def test_any_write_to_a_base_file_rehashes_it_and_a_changed_base_is_detected(
    tmp_path: Path, hashed: list[Path]
) -> None:
    stage = _chained(tmp_path)
    weights = tmp_path / "base" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # touched, same bytes
    hashed.clear()
    vlbridge.load(stage)
    assert hashed == [weights.resolve()]

    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor: same size
    with weights.open("r+b") as handle:  # rewritten in place (same inode), its mtime then put back
        handle.write(data)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    hashed.clear()
    with pytest.raises(CheckpointError, match="whose files changed"):
        vlbridge.load(stage)
    assert hashed == [weights.resolve()]  # its ctime moved, so the cached hash was not trusted


def test_a_damaged_cache_is_ignored(tmp_path: Path, hashed: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    file = tmp_path / "weights.bin"
    file.write_bytes(b"abc")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / file_hash.CACHE_FILE).write_text("{not json")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256("abc")
    assert file_hash.file_sha256(file) == expected
    monkeypatch.setattr(file_hash, "_MEMO", {})
    assert file_hash.file_sha256(file) == expected
    assert hashed == [file.resolve()]  # hashed once: the damaged cache was replaced by a good one
