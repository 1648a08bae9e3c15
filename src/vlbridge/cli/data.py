"""`vlbridge data synth`: render the synthetic visual world (images, captions, instructions, held-out test set)."""

from __future__ import annotations

from typing import Any

from vlbridge.data.synthetic import writer


def add_parser(sub: Any) -> None:
    """Register the subcommand; its flags are the writer's own (`writer.add_arguments`)."""
    parser = sub.add_parser("data", help="dataset tools")
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="render the synthetic visual world into a folder")
    writer.add_arguments(synth)
    synth.set_defaults(run=writer.run)
