"""LoRA on the language model through `peft`: inject adapters, train only them, merge back into plain weights.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021): each targeted Linear W gets a trainable
low-rank update W + (alpha / r) B A with B initialised to zero, so training starts from the unchanged model. `peft`
provides the adapter layers and the merge arithmetic; this module decides where they go (the language model's
q/k/v/o/gate/up/down projections, HF names) and turns the result back into a plain checkpoint: after `merge_lora`
the state_dict has exactly the original keys, so `save_pretrained` / `vlbridge.load` need nothing LoRA-specific.
`save_adapter` writes the unmerged adapter in PEFT's own file layout (adapter_model.safetensors with
`base_model.model.` keys + adapter_config.json), which PEFT can load onto the HF model with the same weights.
`peft` is imported lazily: it is an optional dependency (the `train` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlbridge.atomic import write_safetensors, write_text
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.files import open_safetensors, read_json_object
from vlbridge.train.recipe import LoraRecipe

ADAPTER_NAME = "default"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ConfigError("LoRA needs the `peft` package: pip install 'vlbridge[train]'") from err
    return peft


def _lora_layers(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, adapter layer) for every peft adapter layer inside `module`."""
    layer_cls = _peft().tuners.tuners_utils.BaseTunerLayer
    found = []
    for name, child in module.named_modules():
        if isinstance(child, layer_cls):
            parent_name, _, attr = name.rpartition(".")
            found.append((module.get_submodule(parent_name), attr, child))
    return found


def has_lora(language_model: nn.Module) -> bool:
    """Whether `language_model` carries LoRA adapters."""
    return bool(_lora_layers(language_model))


def apply_lora(language_model: nn.Module, cfg: LoraRecipe) -> int:
    """Inject LoRA adapters into `language_model`'s target Linear layers (in place); returns how many were wrapped.

    peft freezes every base weight of the module and leaves the adapters trainable.
    """
    peft = _peft()
    if has_lora(language_model):
        raise ConfigError("the language model already carries LoRA adapters; merge or unload them first")
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets), bias="none"
    )
    peft.tuners.lora.LoraModel(language_model, config, ADAPTER_NAME)
    return len(_lora_layers(language_model))


def _unload(language_model: nn.Module, merge: bool) -> None:
    for parent, attr, layer in _lora_layers(language_model):
        if merge:
            base, adapter = layer.get_base_layer().weight, layer.lora_A[ADAPTER_NAME].weight
            if base.dtype != adapter.dtype:  # a frozen bf16 base: the merged weight is trained, float32 as the adapter
                base.data = base.data.to(adapter.dtype)
            layer.merge(adapter_names=[ADAPTER_NAME])
        setattr(parent, attr, layer.get_base_layer())
    if hasattr(language_model, "peft_config"):
        del language_model.peft_config


def merge_lora(language_model: nn.Module) -> None:
    """Fold every adapter into its base weight (W += alpha/r B A) and remove the adapter layers. A base weight held in
    a lower precision than its adapter (a frozen bf16 LM) takes the adapter's dtype first, so the merge is computed and
    kept in float32."""
    _unload(language_model, merge=True)


def unload_lora(language_model: nn.Module) -> None:
    """Remove the adapter layers without merging: the base weights are as before LoRA was applied."""
    _unload(language_model, merge=False)


def adapter_state_dict(language_model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors in PEFT's saved layout: `base_model.model.<HF key>` without the adapter name."""
    out = {}
    for name, tensor in language_model.state_dict().items():
        if "lora_" in name:
            out[_PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}.", ".")] = tensor.detach().contiguous()
    return out


def save_adapter(language_model: nn.Module, path: str | Path, cfg: LoraRecipe) -> None:
    """Write the unmerged adapter as PEFT does (adapter_model.safetensors + adapter_config.json), atomically."""
    state = adapter_state_dict(language_model)
    if not state:
        raise CheckpointError("the language model carries no LoRA adapters to save")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / ADAPTER_WEIGHTS, state)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": list(cfg.targets),
        "bias": "none",
        "base_model_name_or_path": None,
    }
    write_text(path / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")


def load_adapter(language_model: nn.Module, path: str | Path) -> LoraRecipe:
    """Inject the adapter saved by `save_adapter` into `language_model` (in place); keys are checked strictly."""
    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{path} holds no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}; is it a saved LoRA adapter?")
    raw = read_json_object(path / ADAPTER_CONFIG, fix="save the adapter again")
    lacking = [key for key in ("r", "lora_alpha", "lora_dropout", "target_modules") if key not in raw]
    if lacking:
        raise CheckpointError(f"{path / ADAPTER_CONFIG} lacks {', '.join(lacking)}; save the adapter again")
    cfg = LoraRecipe(r=raw["r"], alpha=raw["lora_alpha"], dropout=raw["lora_dropout"], targets=raw["target_modules"])
    with open_safetensors(path / ADAPTER_WEIGHTS) as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
    apply_lora(language_model, cfg)
    expected = adapter_state_dict(language_model)
    if set(tensors) != set(expected):
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        unload_lora(language_model)
        raise CheckpointError(
            f"adapter {path} does not fit this language model: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    ours = {k.removeprefix(_PEFT_PREFIX): k for k in tensors}
    named = {n: p for n, p in language_model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(tensors[ours[name.replace(f".{ADAPTER_NAME}.", ".")]])
    return cfg
