"""The README stays true: CI runs its set-up and test commands, the main job prints what it shows, commands parse."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from vlbridge.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_quickstart_is_set_up_main_job_and_test_and_ci_runs_set_up_and_test() -> None:
    setup, main_job, test = _commands()[:3]
    assert setup == 'pip install -e ".[dev]"' and test == "python -m pytest -q"
    assert main_job.startswith("vlbridge chat ") and "--model" not in main_job  # the embedded default
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in (setup, test):
        assert command in ci, f"{command!r} is in the README but not in .ci/run"


def test_main_job_prints_the_readmes_expected_output(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    assert main(shlex.split(_commands()[1])[1:]) == 0
    expected = re.search(r"Expected output:\n\n```text\n(.*?)```", README, flags=re.S)
    assert expected is not None, "the README shows the main job's output in a text block after 'Expected output:'"
    assert capsys.readouterr().out == expected.group(1)


def test_shipped_default_fits_the_package_and_the_readme_quotes_its_stored_scores() -> None:
    from vlbridge.cli.ship import SCORES, sample_image
    from vlbridge.model.io import default_model_dir

    assert sum(f.stat().st_size for f in default_model_dir().iterdir()) <= 20 * 2**20
    assert sample_image().is_file() and f"--image {sample_image().relative_to(ROOT)} " in _commands()[1]
    scores = json.loads((default_model_dir() / SCORES).read_text())["by_type"]
    assert f"{scores['overall']['accuracy']:.3f} on the held-out test set" in README
    for kind, row in scores.items():
        if kind != "overall":
            assert f"{kind.replace('_', ' ')} {row['accuracy']:.2f}" in README, kind


@pytest.mark.parametrize("command", [c for c in _commands() if c.startswith(("vlbridge ", "torchrun "))])
def test_readme_cli_commands_parse(command: str) -> None:
    argv = shlex.split(command)
    start = argv.index("vlbridge") + 1 if argv[0] == "torchrun" else 1
    args = build_parser().parse_args(argv[start:])
    assert callable(args.run)


@pytest.mark.parametrize("command", [c for c in _commands() if " --config " in c and " --set " in c])
def test_readme_recipe_overrides_name_real_keys(command: str) -> None:
    from vlbridge.train.recipe import load_recipe

    argv = shlex.split(command)
    args = build_parser().parse_args(argv[argv.index("vlbridge") + 1 :])
    load_recipe(ROOT / args.config, args.overrides)
