"""Checkpoint weight files: which files a checkpoint folder holds, the config they describe, and where each tensor is.

Reads headers only (safetensors keeps its tensors behind a JSON header), so loading (`model/io.py`), chained
folders (`model/chain.py`) and parts assembly (`model/parts.py`) can check every name and shape before reading a
tensor. A damaged file (empty, cut short, garbage, a shard index naming missing shards or files outside the folder)
raises CheckpointError naming it and the fix.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlbridge.config import ModelConfig, from_dict
from vlbridge.errors import CheckpointError
from vlbridge.files import RECOPY, open_safetensors, read_json_object
from vlbridge.lm.hf_keys import STALE_BUFFER_SUFFIXES
from vlbridge.model.hf_llava import LLAVA_MODEL_TYPES, model_config_from_hf, rename_key
from vlbridge.model.save import FORMAT, FORMAT_VERSION, WEIGHTS, WEIGHTS_INDEX
from vlbridge.vision.hf_keys import HF_PREFIX

TOWER_PREFIX = "vision_encoder."
VISION_PREFIXES = (TOWER_PREFIX, "connector.", "image_newline")
"""State-dict prefixes of the vision plug-in (what a text-only load leaves out)."""
IDENTITY_RULES: tuple[tuple[str, str], ...] = ((r"^", ""),)
OTHER_HALF = ("text_model.", "visual_projection.", "text_projection.", "logit_scale", "logit_bias")
"""Keys of a CLIPModel / SiglipModel checkpoint that belong to its text half (never read)."""


def weight_files(path: Path) -> list[Path]:
    """The checkpoint's weight files: the shards its index names (each a file inside `path`), else WEIGHTS."""
    index = path / WEIGHTS_INDEX
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
            raise CheckpointError(f"{index} has no weight_map from tensor names to shard files; {RECOPY}")
        names = sorted(set(weight_map.values()))
        outside = [name for name in names if Path(name).name != name or name in ("", ".", "..")]
        if outside:
            raise CheckpointError(
                f"{index} names shards by paths, not plain file names ({preview(outside)}); vlbridge reads only "
                f"files inside the checkpoint folder {path}: {RECOPY}"
            )
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{index} names {len(missing)} shard(s) that are not in {path}: {preview(missing)}; copy the "
                "missing shard(s) into that folder"
            )
        return [path / name for name in names]
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    raise CheckpointError(f"{path} holds no {WEIGHTS} or {WEIGHTS_INDEX}; is it a model checkpoint directory?")


def read_config(path: Path) -> tuple[ModelConfig, tuple[tuple[str, str], ...] | None]:
    """The model config stored in `path` and the key rules for its weights (None: already our names)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json; pass a vlbridge or HF llava checkpoint directory")
    raw = read_json_object(cfg_file)
    if raw.get("format") == FORMAT:
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{cfg_file}: format_version {raw.get('format_version')} is not supported")
        if not isinstance(raw.get("model"), dict):
            raise CheckpointError(
                f"{cfg_file} has no 'model' section (every setting of the model); {RECOPY}, or save the model again"
            )
        return from_dict(ModelConfig, raw["model"]), None
    return model_config_from_hf(raw, path)


def index_weights(path: Path, rules: tuple[tuple[str, str], ...] | None) -> dict[str, tuple[Path, str]]:
    """Our name -> (file, stored key) for every tensor in the checkpoint; reads headers only, no tensor data."""
    index: dict[str, tuple[Path, str]] = {}
    unmapped: list[str] = []
    for file in weight_files(path):
        with open_safetensors(file) as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                if key.endswith(STALE_BUFFER_SUFFIXES):
                    continue
                name = key if rules is None else rename_key(key, rules)
                if name is None:
                    unmapped.append(key)
                else:
                    index[name] = (file, key)
    if unmapped:
        raise CheckpointError(f"{path}: {len(unmapped)} weight(s) of unknown layout: {preview(unmapped)}")
    return index


def preview(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def whole_model_tower(path: Path) -> tuple[ModelConfig, tuple[tuple[str, str], ...] | None] | None:
    """(config, weight-name rules) when `path` holds a whole vision-language checkpoint (vlbridge or HF llava), whose
    vision encoder serves as the tower; None for a CLIP/SigLIP tower directory. A text-only checkpoint is refused."""
    raw = read_json_object(path / "config.json")
    if raw.get("format") != FORMAT and raw.get("model_type") not in LLAVA_MODEL_TYPES:
        return None
    config, rules = read_config(path)
    if config.vision is None:
        raise CheckpointError(
            f"vision tower {path} is a text-only checkpoint: it has no vision encoder to take; pass a vision-language "
            "checkpoint or an HF CLIP/SigLIP model directory"
        )
    return config, rules


def tower_index(path: Path) -> dict[str, tuple[Path, str]]:
    """The ViT's tensors (our names, without `vision_encoder.`) -> (file, stored key) in a CLIP/SigLIP tower folder:
    the `vision_model.` half of a CLIPModel / SiglipModel or a transformers 4.x vision model, or a transformers 5.x
    bare vision model's prefix-free keys; the text half is left out unread. A whole vision-language checkpoint
    (`whole_model_tower`) gives its vision encoder's tensors."""
    whole = whole_model_tower(path)
    if whole is not None:
        index = index_weights(path, whole[1])
        return {name.removeprefix(TOWER_PREFIX): at for name, at in index.items() if name.startswith(TOWER_PREFIX)}
    index = index_weights(path, IDENTITY_RULES)
    prefixed = any(name.startswith(HF_PREFIX) for name in index)
    stray = sorted(n for n in index if not n.startswith(OTHER_HALF) and prefixed != n.startswith(HF_PREFIX))
    if stray:
        raise CheckpointError(
            f"vision tower {path} holds weights of neither the vision tower nor the text half of a CLIP/SigLIP model "
            f"({', '.join(stray[:5])}); pass a CLIP or SigLIP checkpoint directory"
        )
    return {name.removeprefix(HF_PREFIX): where for name, where in index.items() if not name.startswith(OTHER_HALF)}


def assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put `value` in place of the (meta) parameter or buffer `name`, keeping whether it trains. A tensor mapped
    from the file is used where it lies, not copied (see `vlbridge.atomic.write_safetensors` on alignment)."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    old = getattr(module, leaf)
    setattr(
        module, leaf, nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    )
