"""Load time of a chained stage folder on a ~100 MB base: every load hashing the base's files, against a second load
whose hashes come from the file-hash cache (vlbridge.model.file_hash).

The base is the embedded default's config with a wider, deeper LM (random weights, float32, ~110 MB); the stage
folder is chained on it with its connector changed. "Hashing" loads with an empty cache each time (what every load
did before the cache); "cached" loads in a fresh process's state (the in-process memo emptied) with the disk cache
filled by an earlier load. Alternating, `--repeats` of each, the base's pages already in the page cache for both (so
the figure is the hashing's CPU cost; a cold page cache adds the read). Run from the repository root:

    python experiments/chain_hash_cache.py --dir /tmp/chain-hash --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import vlbridge
from vlbridge.cache_dir import CACHE_ENV
from vlbridge.model import file_hash
from vlbridge.model.chain import BaseRef, save_chained
from vlbridge.model.io import default_model_dir
from vlbridge.model.vlm import VisionLanguageModel


def build(folder: Path) -> Path:
    """The base (whole) and the stage (chained on it) under `folder`; returns the stage folder."""
    config = vlbridge.load()[0].config
    lm = replace(config.language_model, hidden_size=512, intermediate_size=1536, num_hidden_layers=8)
    lm = replace(lm, num_attention_heads=8, num_key_value_heads=8)
    torch.manual_seed(0)
    model = VisionLanguageModel(replace(config, language_model=lm))
    model.save_pretrained(folder / "base")
    for name in os.listdir(default_model_dir()):  # the tokenizer and processor files
        if name not in ("config.json", "model.safetensors"):
            shutil.copy(default_model_dir() / name, folder / "base" / name)
    model = vlbridge.load(folder / "base")[0]
    with torch.no_grad():
        next(model.connector.parameters()).add_(1.0)
    save_chained(folder / "stage", model.state_dict(), model.config, model.processor, [BaseRef(folder / "base")])
    return folder / "stage"


def timed_load(stage: Path, cache: Path) -> float:
    os.environ[CACHE_ENV] = str(cache)
    file_hash._MEMO.clear()  # as a new process
    start = time.perf_counter()
    vlbridge.load(stage)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    stage = build(args.dir)
    size = sum(f.stat().st_size for f in (args.dir / "base").iterdir())
    print(f"base: {size / 1e6:.1f} MB; stage folder: {(stage / 'model.safetensors').stat().st_size / 1e6:.2f} MB")
    warm = args.dir / "cache-warm"
    timed_load(stage, warm)  # fills the disk cache (and the page cache)
    hashing, cached = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as empty:
            hashing.append(timed_load(stage, Path(empty)))
        cached.append(timed_load(stage, warm))
    med_h, med_c = statistics.median(hashing), statistics.median(cached)
    print(f"hashing every load: {', '.join(f'{t:.3f}' for t in hashing)} s (median {med_h:.3f})")
    print(f"hashes cached:      {', '.join(f'{t:.3f}' for t in cached)} s (median {med_c:.3f})")
    print(f"cached / hashing: {med_c / med_h:.2f}x; saved {med_h - med_c:.3f} s a load")


if __name__ == "__main__":
    main()
