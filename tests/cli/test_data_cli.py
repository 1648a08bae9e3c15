"""`vlbridge data synth`: one flag per SynthOptions field, the writer's dataset from the flags, bad values as exit 2."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlbridge.cli import data as data_cli
from vlbridge.cli.main import main
from vlbridge.data.synthetic import SynthOptions
from vlbridge.train import load_recipe
from vlbridge.train.distributed import World
from vlbridge.train.pipeline import prepare_data


def test_writes_a_dataset_of_the_given_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "12", "--seed", "2", "--image-size", "64"]) == 0
    assert "test:" in capsys.readouterr().out
    with Image.open(next((tmp_path / "d/images").iterdir())) as image:
        assert image.size == (64, 64)


def test_every_option_is_a_kebab_case_flag_with_its_help_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # the help as one line, whatever the wrapping
    for option in dataclasses.fields(SynthOptions):
        flag = option.name.replace("_", "-")
        assert f"--{flag} " in text and f"{option.metadata['help']} (default: " in text, option.name
    assert "--turns TURNS TURNS" in text and "--focus TYPE [TYPE ...]" in text and "(default: [2, 5])" in text


def _options_from(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> SynthOptions:
    """The options `vlbridge data synth ARGV` hands the writer (which is not run)."""
    given: list[SynthOptions] = []

    def record(out_dir: str, options: SynthOptions, overwrite: bool = False) -> dict[str, Any]:
        given.append(options)
        return {"images": {}, "splits": {}}

    monkeypatch.setattr(data_cli, "synthesize", record)
    assert main(["data", "synth", "--out", "unused", *argv]) == 0
    return given[0]


def test_flags_set_the_options_of_their_name_and_default_to_the_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _options_from([], monkeypatch) == SynthOptions()
    argv = ["--n", "7", "--seed", "3", "--image-size", "64", "--test-fraction", "0.2", "--val-fraction", "0.1"]
    argv += ["--turns", "3", "4", "--focus", "relation", "count", "--spatial", "0.5", "--drills", "9"]
    argv += ["--varied-names", "0.25", "--world", "highres"]
    expected = SynthOptions(
        n=7,
        seed=3,
        image_size=64,
        test_fraction=0.2,
        val_fraction=0.1,
        turns=[3, 4],
        focus=["relation", "count"],
        spatial=0.5,
        drills=9,
        varied_names=0.25,
        world="highres",
    )
    assert _options_from(argv, monkeypatch) == expected


def test_a_value_the_writer_cannot_use_exits_2_and_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "12", "--spatial", "2"]) == 2
    assert "spatial must be a probability in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_a_field_type_argparse_cannot_parse_as_given_is_refused_when_the_flags_are_made() -> None:
    @dataclasses.dataclass(frozen=True)
    class Probe:
        quiet: bool = dataclasses.field(default=False, metadata={"help": "say less"})

    (quiet,) = dataclasses.fields(Probe)
    with pytest.raises(TypeError, match="quiet: no flag for <class 'bool'>"):
        data_cli._flag(quiet, bool)


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _small_default(path: Path, root: Path) -> Path:
    """configs/default.yaml with 60 scenes and 40 drills, rendering into `root`."""
    path.write_text(
        f"base: {CONFIGS / 'default.yaml'}\ndata:\n  root: {root}\n  synth: {{n: 60, drills: 40, test_fraction: 0.1}}\n"
    )
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.rglob("*.*")}


def test_recipe_renders_what_training_would_byte_for_byte_into_its_data_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_file = _small_default(tmp_path / "small.yaml", tmp_path / "by_cli")
    assert main(["data", "synth", "--recipe", str(recipe_file)]) == 0
    assert f"to {tmp_path / 'by_cli'}" in capsys.readouterr().out  # the recipe's data.root, no --out needed
    recipe = load_recipe(recipe_file)
    trained = replace(recipe, data=replace(recipe.data, root=str(tmp_path / "by_train")))
    prepare_data(trained, World())  # what `vlbridge train --config small.yaml` renders first
    by_cli, by_train = _digests(tmp_path / "by_cli"), _digests(tmp_path / "by_train")
    assert "test.jsonl" in by_cli and "images/test_000005.png" in by_cli and "drills.json" in by_cli
    assert by_cli == by_train


def test_the_readme_renders_the_defaults_data_before_it_evaluates_on_it() -> None:
    readme = (CONFIGS.parent / "README.md").read_text()
    root = load_recipe(CONFIGS / "default.yaml").data.root
    synth, evaluate = "vlbridge data synth --recipe configs/default.yaml", f"vlbridge eval --data {root} "
    assert synth in readme and evaluate in readme and readme.index(synth) < readme.index(evaluate)


def test_recipe_refuses_option_flags_a_recipe_without_synth_and_no_folder_at_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_file = _small_default(tmp_path / "small.yaml", tmp_path / "d")
    assert main(["data", "synth", "--recipe", str(recipe_file), "--n", "12", "--seed", "1"]) == 2
    assert "so --n, --seed would make data the recipe does not; drop --n, --seed" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"base: {recipe_file}\ndata:\n  synth: null\n")
    assert main(["data", "synth", "--recipe", str(plain)]) == 2
    assert f"recipe {plain} has no data.synth section" in capsys.readouterr().err
    assert main(["data", "synth", "--n", "12"]) == 2
    assert "give the output folder: --out DIR (or --recipe FILE" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
