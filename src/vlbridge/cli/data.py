"""`vlbridge data synth`: render the synthetic visual world (images, captions, instructions, held-out test set).

    vlbridge data synth --out DIR [--overwrite] [--n N] [--seed S] [--image-size PX] [--turns LOW HIGH] ...

The flags after --out and --overwrite are made from `SynthOptions`' fields (the field name in kebab-case, its
default, the help text in its metadata), so the command, the writer and a recipe's `data.synth` section take the
same options under the same names, and an option added to the dataclass is a flag here without an edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from vlbridge.data.synthetic import SynthOptions, synthesize

FLAG_TYPES = (int, float, str)  # what argparse's `type=` parses as given; a bool field would need a flag action


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("data", help="dataset tools")
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="render the synthetic visual world into a folder")
    add_arguments(synth)
    synth.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlbridge data synth`: the output folder, `--overwrite`, and one flag per SynthOptions field."""
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    hints = typing.get_type_hints(SynthOptions)
    for option in dataclasses.fields(SynthOptions):
        parser.add_argument(f"--{option.name.replace('_', '-')}", **_flag(option, hints[option.name]))


def _flag(option: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """argparse settings for one field: the value type (a list field: its item type, `nargs` values), the default
    and the help text, which shows the default."""
    default = option.default if option.default_factory is dataclasses.MISSING else option.default_factory()
    settings: dict[str, Any] = {"default": default, "help": f"{option.metadata['help']} (default: %(default)s)"}
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
        settings |= {"nargs": option.metadata.get("nargs", "+"), "metavar": option.metadata.get("metavar")}
    if annotation not in FLAG_TYPES:
        raise TypeError(f"SynthOptions.{option.name}: no flag for {annotation}; fields are int, float, str or lists")
    return settings | {"type": annotation}


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print a summary per split (questions, mean majority-answer baseline)."""
    options = SynthOptions(**{option.name: getattr(args, option.name) for option in dataclasses.fields(SynthOptions)})
    stats = synthesize(args.out, options, overwrite=args.overwrite)
    print(f"wrote {stats['images']} images to {args.out} (answers and baselines per type: stats.json)")
    for split, summary in stats["splits"].items():
        baseline = summary["mean_majority_baseline"]
        print(f"{split}: {summary['questions']} questions, mean majority-answer baseline {baseline:.3f}")
    return 0
