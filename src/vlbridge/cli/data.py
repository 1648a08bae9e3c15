"""`vlbridge data synth`: render the synthetic visual world (images, captions, instructions, held-out test set);
`vlbridge data filter` and `vlbridge data dedup` (data hygiene) are in cli/hygiene.py.

    vlbridge data synth --out DIR [--overwrite] [--n N] [--seed S] [--image-size PX] [--turns LOW HIGH] ...
    vlbridge data synth --recipe configs/default.yaml [--out DIR] [--overwrite]

The flags after --out and --overwrite are made from `SynthOptions`' fields (the field name in kebab-case, its
default, the help text in its metadata), so the command, the writer and a recipe's `data.synth` section take the
same options under the same names, and an option added to the dataclass is a flag here without an edit.

`--recipe FILE` takes every option from a training recipe's `data.synth` and writes to its `data.root` unless --out
says otherwise: the files `vlbridge train --config FILE` would render, byte for byte, without training. So the
embedded default's held-out test set, which its shipped scores were computed on, is one command away; a later
`vlbridge train` of that recipe finds its data there. Option flags beside --recipe are refused: the folder would no
longer hold the recipe's data, and a training run would read it as if it did.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from vlbridge.cli import hygiene
from vlbridge.cli.data_video import add_video_parser
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.errors import ConfigError

FLAG_TYPES = (int, float, str)  # what argparse's `type=` parses as given; a bool field would need a flag action


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("data", help="dataset tools")
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="render the synthetic visual world into a folder")
    add_arguments(synth)
    synth.set_defaults(run=run)
    add_video_parser(data_sub)
    hygiene.add_parsers(data_sub)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlbridge data synth`: the output folder, `--overwrite`, `--recipe`, and one flag per SynthOptions
    field (absent from the parsed namespace unless given, so `--recipe` can tell which were)."""
    parser.add_argument(
        "--out", default=None, help="output folder, new or empty (default: with --recipe, its data.root)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    parser.add_argument(
        "--recipe",
        default=None,
        metavar="FILE",
        help="a training recipe (configs/default.yaml): its data.synth options, and its data.root as --out, so the "
        "folder holds what `vlbridge train --config FILE` would render; no option flags beside it",
    )
    hints = typing.get_type_hints(SynthOptions)
    for option in dataclasses.fields(SynthOptions):
        parser.add_argument(f"--{option.name.replace('_', '-')}", **_flag(option, hints[option.name]))


def _flag(option: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """argparse settings for one field: the value type (a list field: its item type, `nargs` values), no default in
    the namespace (the writer's default applies when the flag is absent) and the help text, which shows that
    default."""
    default = option.default if option.default_factory is dataclasses.MISSING else option.default_factory()
    settings: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{option.metadata['help']} (default: {default})"}
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
        settings |= {"nargs": option.metadata.get("nargs", "+"), "metavar": option.metadata.get("metavar")}
    if annotation not in FLAG_TYPES:
        raise TypeError(f"SynthOptions.{option.name}: no flag for {annotation}; fields are int, float, str or lists")
    return settings | {"type": annotation}


def options_and_folder(args: argparse.Namespace) -> tuple[SynthOptions, Path]:
    """The writer's options and output folder: from the flags, or from `--recipe` (its data.synth and data.root);
    ConfigError when --recipe meets option flags, names a recipe that renders nothing, or neither it nor --out is
    given."""
    given = {
        option.name: getattr(args, option.name) for option in dataclasses.fields(SynthOptions) if option.name in args
    }
    if args.recipe is None:
        if args.out is None:
            raise ConfigError("give the output folder: --out DIR (or --recipe FILE, which writes to its data.root)")
        return SynthOptions(**given), Path(args.out)
    if given:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise ConfigError(
            f"--recipe takes every option from the recipe's data.synth, so {flags} would make data the recipe does "
            f"not; drop {flags}, or drop --recipe and give every option as a flag"
        )
    from vlbridge.train import load_recipe

    recipe = load_recipe(args.recipe)
    if recipe.data.synth is None:
        raise ConfigError(
            f"recipe {args.recipe} has no data.synth section (it trains on data.root={recipe.data.root}, which is not "
            "rendered); give a recipe that renders the synthetic world, or the options as flags"
        )
    return recipe.data.synth, Path(args.out if args.out is not None else recipe.data.root)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print a summary per split (questions, mean majority-answer baseline)."""
    options, out = options_and_folder(args)
    stats = synthesize(out, options, overwrite=args.overwrite)
    print(f"wrote {stats['images']} images to {out} (answers and baselines per type: stats.json)")
    for split, summary in stats["splits"].items():
        baseline = summary["mean_majority_baseline"]
        print(f"{split}: {summary['questions']} questions, mean majority-answer baseline {baseline:.3f}")
    return 0
