"""Atomic writes: the target appears whole or not at all, with ordinary permissions, and no temp file remains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from killed import killed_mid_write
from vlbridge.atomic import atomic_path, remove_stale, write_text


def test_write_replaces_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.json"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]


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
