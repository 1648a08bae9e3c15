"""Atomic writes: the target appears whole or not at all, with ordinary permissions, and no temp file remains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from killed import killed_mid_write
from vlbridge.atomic import ALIGNMENT, atomic_path, remove_stale, write_safetensors, write_text


def test_write_replaces_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.json"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="the kernel reports the umask on Linux only")
def test_a_write_reads_the_umask_without_changing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the umask to read it would, for a moment, give files other threads create (a server's, a trainer's
    loader's) a wrong mode."""
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("atomic writes must not set the umask"))
        write_text(tmp_path / "a.json", "{}")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_remove_stale_deletes_what_a_killed_write_left_and_nothing_else(tmp_path: Path) -> None:
    killed_mid_write(tmp_path / "model.safetensors")
    (stale,) = list(tmp_path.iterdir())
    users = [".notes.tmp", ".model.safetensors.abc12345.tmp", "model.safetensors", "run.tmp", "x.vlbridge-1.tmp"]
    for name in users:
        (tmp_path / name).write_text("the user's")
    assert remove_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(users)
    assert remove_stale(tmp_path / "absent") == []


@pytest.mark.parametrize("name_length", range(1, 70, 3))
def test_safetensors_data_starts_on_the_alignment_boundary(tmp_path: Path, name_length: int) -> None:
    """Whatever the header's length (here moved by the tensor names), the data section starts on a 64-byte boundary,
    so every tensor of a 64-byte multiple is mapped aligned; the tensors read back equal."""
    tensors = {"w" * name_length: torch.randn(4, 16), "bias": torch.arange(16, dtype=torch.float32)}
    target = tmp_path / "model.safetensors"
    write_safetensors(target, tensors)
    assert (8 + int.from_bytes(target.read_bytes()[:8], "little")) % ALIGNMENT == 0
    with safe_open(target, "pt") as handle:
        for name, tensor in tensors.items():
            loaded = handle.get_tensor(name)
            assert torch.equal(loaded, tensor) and loaded.data_ptr() % ALIGNMENT == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
