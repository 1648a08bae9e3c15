"""`vlbridge data synth`, `train` and `eval` write only into the folders they are given: not beside their inputs,
not into the working directory, the home directory or the repository (SPEC section 6b)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

from tiny_run import align_stage, recipe, write_recipe

import vlbridge

SRC = Path(vlbridge.__file__).parents[1]
REPO = SRC.parent
Snapshot = dict[Path, tuple[int, int]]


def _snapshot(root: Path, skip: tuple[str, ...] = ()) -> Snapshot:
    """Every file and folder under `root` (but those named in `skip`, anywhere) with its mtime and size."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in [*dirs, *files]:
            path = Path(folder) / name
            stat = path.lstat()
            found[path] = (stat.st_mtime_ns, stat.st_size if name in files else 0)
    return found


def _changed(before: Snapshot, after: Snapshot) -> set[Path]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


@pytest.mark.slow  # three fresh interpreters importing torch, and a 2-step training run
def test_commands_write_only_into_the_folders_they_are_given(tmp_path: Path) -> None:
    cwd, home, matplotlib = tmp_path / "cwd", tmp_path / "home", tmp_path.parent / f"{tmp_path.name}-matplotlib"
    cwd.mkdir()
    home.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HOME": str(home),
        "OMP_NUM_THREADS": "1",
        # Not vlbridge's writes: Python's bytecode cache, and matplotlib's per-user font cache (training draws its
        # loss plot with matplotlib, which caches its font list in ~/.cache/matplotlib unless told elsewhere).
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLCONFIGDIR": str(matplotlib),
    }
    env.pop("XDG_CACHE_HOME", None)
    repo = _snapshot(REPO, skip=(".git", "__pycache__", ".pytest_cache", ".ruff_cache"))
    data, run_dir, eval_dir = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    config = write_recipe(
        tmp_path / "recipe.yaml", recipe(tmp_path / "recipe-run-dir", data, None, [align_stage(steps=2)])
    )

    def vlbridge_run(*args: str | Path, writes: Path) -> None:
        before = _snapshot(tmp_path)
        command = [sys.executable, "-m", "vlbridge", *map(str, args)]
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        changed = _changed(before, _snapshot(tmp_path))
        assert changed, f"{args[0]} wrote nothing"
        assert sorted(p for p in changed if p != writes and writes not in p.parents) == [], args[0]

    vlbridge_run("data", "synth", "--out", data, "--n", "16", "--image-size", "48", writes=data)
    vlbridge_run("train", "--config", config, "--run-dir", run_dir, writes=run_dir)
    vlbridge_run(
        "eval", "--model", run_dir, "--data", data, "--out", eval_dir, "--max-new-tokens", "2", writes=eval_dir
    )
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []
    assert not (tmp_path / "recipe-run-dir").exists()  # --run-dir won over the recipe's run_dir
    assert _changed(repo, _snapshot(REPO, skip=(".git", "__pycache__", ".pytest_cache", ".ruff_cache"))) == set()
