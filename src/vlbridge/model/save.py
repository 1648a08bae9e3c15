"""Writing vlbridge checkpoint directories: config.json (every choice), model.safetensors and the processor's files.

Apart from loading (`model/io.py`) so that `VisionLanguageModel.save_pretrained` needs nothing that imports the model
class: the layers stay acyclic. Each file is written atomically, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlbridge.atomic import write_safetensors, write_text
from vlbridge.config import ModelConfig, to_dict

if TYPE_CHECKING:
    from vlbridge.model.processor import Processor

FORMAT = "vlbridge"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def tied_keys(config: ModelConfig) -> set[str]:
    """State-dict keys that are views of another tensor in this config (a tied LM head): never stored. A quantised
    LM head holds the int8 table and its scales, and the embeddings are the views."""
    if not config.language_model.tie_word_embeddings:
        return set()
    if config.quantization is None:
        return {"language_model.lm_head.weight"}
    return {"language_model.model.embed_tokens.weight", "language_model.model.embed_tokens.weight_scale"}


def save_checkpoint(
    path: str | Path, state: Mapping[str, torch.Tensor], config: ModelConfig, processor: Processor | None
) -> None:
    """Write `state` (less tied keys), the config and, when given, the processor's files into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tied = tied_keys(config)
    tensors = {k: v.detach().contiguous() for k, v in state.items() if k not in tied}
    write_safetensors(path / WEIGHTS, tensors)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": to_dict(config)}
    write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    if processor is not None:
        processor.save_pretrained(path)
