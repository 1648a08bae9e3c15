"""Saving and loading models: vlbridge's own format and the HF llava layout, with strict keys.

A checkpoint directory is self-contained: config.json (every choice), model.safetensors (or HF shards with
model.safetensors.index.json), and the processor's tokenizer/preprocessor files. `vision=False` reads no vision
weights at all, so a text-only deployment never holds them in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlbridge.atomic import atomic_path, write_text
from vlbridge.config import ModelConfig, from_dict, to_dict
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.model.hf_llava import model_config_from_hf, rename_key
from vlbridge.model.vlm import VisionLanguageModel

FORMAT = "vlbridge"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
VISION_PREFIXES = ("vision_encoder.", "connector.")


def default_model_dir() -> Path:
    """Where the embedded default model ships inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "default"


def _tied_keys(model: VisionLanguageModel) -> set[str]:
    return {"language_model.lm_head.weight"} if model.config.language_model.tie_word_embeddings else set()


def save_pretrained(model: VisionLanguageModel, path: str | Path) -> None:
    """Write config.json, model.safetensors and the attached processor's files, each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tied = _tied_keys(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": to_dict(model.config)}
    write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    if model.processor is not None:
        model.processor.save_pretrained(path)


def _weight_files(path: Path) -> list[Path]:
    if (path / WEIGHTS_INDEX).is_file():
        index = json.loads((path / WEIGHTS_INDEX).read_text())
        return [path / name for name in sorted(set(index["weight_map"].values()))]
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    raise CheckpointError(f"{path} holds no {WEIGHTS} or {WEIGHTS_INDEX}; is it a model checkpoint directory?")


def read_config(path: Path) -> tuple[ModelConfig, tuple[tuple[str, str], ...] | None]:
    """The model config stored in `path` and the key rules for its weights (None: already our names)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json; pass a vlbridge or HF llava checkpoint directory")
    raw = json.loads(cfg_file.read_text())
    if raw.get("format") == FORMAT:
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{cfg_file}: format_version {raw.get('format_version')} is not supported")
        return from_dict(ModelConfig, raw["model"]), None
    return model_config_from_hf(raw, path)


def read_weights(path: Path, rules: tuple[tuple[str, str], ...] | None, vision: bool) -> dict[str, torch.Tensor]:
    """Tensors under our names; with vision=False the vision tensors are never read from disk."""
    tensors: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for file in _weight_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                name = key if rules is None else rename_key(key, rules)
                if name is None:
                    unmapped.append(key)
                elif vision or not name.startswith(VISION_PREFIXES):
                    tensors[name] = handle.get_tensor(key)
    if unmapped:
        raise CheckpointError(f"{path}: {len(unmapped)} weight(s) of unknown layout: {_preview(unmapped)}")
    return tensors


def _preview(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_weights_strict(model: VisionLanguageModel, tensors: dict[str, Any], source: Path | str) -> None:
    """Load `tensors`; any missing or unexpected key raises CheckpointError listing them."""
    tied = _tied_keys(model)
    expected = set(model.state_dict()) - tied
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected - tied)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        raise CheckpointError(f"checkpoint {source} does not fit the model its config describes: " + "; ".join(parts))
    shapes = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(shapes[k].shape)}"
        for k, v in tensors.items()
        if k not in tied and v.shape != shapes[k].shape
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {source} has weights of the wrong shape: {_preview(wrong)}")
    model.load_state_dict({k: v for k, v in tensors.items() if k not in tied}, strict=False)


def load(
    path: str | Path | None = None, vision: bool = True, device: str | torch.device = "cpu", dtype: Any = None
) -> tuple[VisionLanguageModel, Any]:
    """Load (model, processor) from a vlbridge or HF llava-layout directory; None loads the embedded default."""
    from vlbridge.model.build import build_processor

    if path is None:
        path = default_model_dir()
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"the embedded default model is not in this installation ({path}); train it with "
                "`vlbridge train --config configs/default.yaml` or pass --model PATH"
            )
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist; pass a vlbridge or HF llava checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is a file; pass the checkpoint directory that holds config.json")
    config, rules = read_config(path)
    model = VisionLanguageModel(config, vision=vision)
    load_weights_strict(model, read_weights(path, rules, vision=model.has_vision), path)
    torch_dtype = _resolve_dtype(dtype)
    model.to(device=device, dtype=torch_dtype).eval()
    model.processor = build_processor(model, path)
    return model, model.processor


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]
