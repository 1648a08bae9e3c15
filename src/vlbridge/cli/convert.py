"""`vlbridge convert gguf FILE --out DIR`: a llama.cpp GGUF LLM (Llama architecture) -> an HF-layout directory.

The directory (config.json, float32 model.safetensors, tokenizer with chat template) loads with `vlbridge.load(DIR)`
as a text LLM and serves as `init_from` for a recipe that adds vision. Needs the `gguf` extra.

    vlbridge convert gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Register the subcommand and its one format."""
    parser = sub.add_parser("convert", help="import a model from another format (gguf) into an HF-layout folder")
    formats = parser.add_subparsers(dest="format", required=True)
    gguf = formats.add_parser("gguf", help="a llama.cpp GGUF LLM (Llama architecture, any dequantisable type)")
    gguf.add_argument("file", help="the .gguf file")
    gguf.add_argument("--out", required=True, help="the folder to write (must not hold a model yet)")
    gguf.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Convert FILE and say where the model went."""
    from vlbridge.deploy.gguf import convert_gguf

    out = convert_gguf(args.file, args.out)
    print(f"wrote {out}: load it with vlbridge.load({str(out)!r}, vision=False), or use it as a recipe's init_from")
    return 0
