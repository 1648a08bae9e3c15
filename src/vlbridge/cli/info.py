"""`vlbridge info PATH`: parameters per component, visual tokens per image and context length of a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from vlbridge.model.io import default_model_dir, read_config
from vlbridge.model.vlm import VisionLanguageModel


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("info", help="describe a checkpoint without loading its weights")
    parser.add_argument("path", nargs="?", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def describe(path: Path) -> dict[str, Any]:
    """Facts about the checkpoint at `path`, computed from its config on the meta device (no weights read)."""
    config, _ = read_config(path)
    with torch.device("meta"):
        model = VisionLanguageModel(config)
    params = {
        name: sum(p.numel() for p in part.parameters())
        for name, part in (
            ("vision_encoder", model.vision_encoder),
            ("connector", model.connector),
            ("language_model", model.language_model),
        )
        if part is not None
    }
    facts: dict[str, Any] = {
        "path": str(path),
        "parameters": params,
        "parameters_total": sum(params.values()),
        "context_length": config.language_model.max_position_embeddings,
        "connector": config.connector.name if model.has_vision else None,
    }
    if model.has_vision:
        size = config.image_processor.crop_size
        facts["image_size"] = size
        facts["visual_tokens_per_image"] = model.tokens_per_image(size, size)
    return facts


def run(args: argparse.Namespace) -> int:
    """Print the description."""
    facts = describe(Path(args.path) if args.path else default_model_dir())
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"checkpoint         {facts['path']}")
    for name, count in facts["parameters"].items():
        print(f"  {name:<16} {count:>14,d} parameters")
    print(f"  {'total':<16} {facts['parameters_total']:>14,d} parameters")
    print(f"context length     {facts['context_length']}")
    if "visual_tokens_per_image" in facts:
        print(f"connector          {facts['connector']}")
        print(f"visual tokens      {facts['visual_tokens_per_image']} per {facts['image_size']}px image")
    else:
        print("vision             none (text-only model)")
    return 0
