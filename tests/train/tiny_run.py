"""Tiny training runs for tests: a synthetic dataset, a trained tokenizer, a tiny model and recipe builders.

Imported by tests/train/conftest.py and tests/cli/test_train_cli.py (by path, as tests are not a package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_MODEL: dict[str, Any] = {
    "language_model": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    },
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 48,
        "patch_size": 16,
    },
    "connector": {"name": "mlp"},
    "image_processor": {"size": 48, "crop_size": 48},
}


def make_data(root: Path, n: int = 24) -> Path:
    """A small synthetic dataset (48 px images) in `root`."""
    from vlbridge.data.synthetic import SynthOptions, synthesize

    synthesize(root, SynthOptions(n=n, seed=0, image_size=48))
    return root


def make_tokenizer(data_root: Path, out: Path, vocab_size: int = 320) -> Path:
    """A byte-level BPE tokenizer trained on the dataset's conversations, saved to `out`."""
    from vlbridge.data.llava_json import conversation_texts, load_llava
    from vlbridge.lm.tokenizer_train import train_tokenizer

    texts = conversation_texts(load_llava(data_root / "instruct.json").items)
    train_tokenizer(texts, vocab_size, template="chatml").save(out)
    return out


def stage(name: str, objective: str, data: str, parts: dict[str, str], lr: dict[str, float], **kw: Any) -> dict:
    """A stage mapping with tiny defaults (4 steps, batch 4, no mid-stage checkpoints)."""
    base = {"steps": 4, "batch_size": 4, "max_length": 128, "save_every": 0, "log_every": 1, "warmup_ratio": 0.25}
    return {"name": name, "objective": objective, "data": data, "parts": parts, "lr": lr, **base, **kw}


def align_stage(**kw: Any) -> dict:
    """Stage 1: only the connector trains, on captions with the plain template."""
    parts, lr = {"connector": "full"}, {"connector": 1e-2}
    return stage("align", "causal_lm", "captions.json", parts, lr, template="plain", **kw)


def instruct_stage(lora: bool = False, **kw: Any) -> dict:
    """Stage 2: connector + LM (fully, or with LoRA) on instructions."""
    extra = {"lora": {"r": 4, "alpha": 8, "dropout": 0.1}} if lora else {}
    mode = "lora" if lora else "full"
    parts = {"connector": "full", "language_model": mode}
    lr = {"connector": 1e-2, "language_model": 1e-2}
    return stage("instruct", "causal_lm", "instruct.json", parts, lr, **extra, **kw)


def recipe(run_dir: Path, data_root: Path, tokenizer_dir: Path | None, stages: list[dict], **kw: Any) -> dict:
    """A recipe mapping for the tiny model on CPU."""
    tokenizer = {"path": str(tokenizer_dir)} if tokenizer_dir else {"vocab_size": 320, "template": "chatml"}
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "device": "cpu",
        "model": TINY_MODEL,
        "tokenizer": tokenizer,
        "data": {"root": str(data_root)},
        "stages": stages,
        **kw,
    }


def write_recipe(path: Path, data: dict) -> Path:
    """Write a recipe mapping as YAML."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
