"""The README's quickstart stays true: CI runs its set-up and test commands, and its vlbridge commands parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vlbridge.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_ci_runs_the_readme_setup_and_test_commands() -> None:
    quickstart = _commands()[:2]
    assert quickstart == ['pip install -e ".[dev]"', "python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in quickstart:
        assert command in ci, f"{command!r} is in the README but not in .ci/run"


@pytest.mark.parametrize("command", [c for c in _commands() if c.startswith(("vlbridge ", "torchrun "))])
def test_readme_cli_commands_parse(command: str) -> None:
    argv = shlex.split(command)
    start = argv.index("vlbridge") + 1 if argv[0] == "torchrun" else 1
    args = build_parser().parse_args(argv[start:])
    assert callable(args.run)


def test_embedded_default_status_is_stated(tmp_path: Path) -> None:
    from vlbridge.errors import CheckpointError
    from vlbridge.model.io import default_model_dir, load

    if (default_model_dir() / "config.json").is_file():
        pytest.fail("the embedded default now ships: replace the README's status note with the one-command main job")
    assert "It is not shipped yet" in README
    with pytest.raises(CheckpointError, match="not shipped"):
        load(None)


@pytest.mark.parametrize("command", [c for c in _commands() if " --config " in c and " --set " in c])
def test_readme_recipe_overrides_name_real_keys(command: str) -> None:
    from vlbridge.train.recipe import load_recipe

    argv = shlex.split(command)
    args = build_parser().parse_args(argv[argv.index("vlbridge") + 1 :])
    load_recipe(ROOT / args.config, args.overrides)
