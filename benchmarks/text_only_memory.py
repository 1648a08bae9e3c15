"""Resident memory of a text-only deployment (`vlbridge.load(path, vision=False)`) against the full model.

Each load runs in a fresh process and reports the resident memory the loaded model adds (VmRSS after minus
before), the process's peak (VmHWM) and the bytes of its parameters, so nothing is shared between the two.
The seed article quotes ~40% less memory for text-only deployments; the saving is the vision tower's share.

    python benchmarks/text_only_memory.py [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from checkpoints import write_llava_checkpoint

PROBE = """
import gc, json, pathlib, sys, torch
from vlbridge.model.io import load_weights, read_config
from vlbridge.model.vlm import VisionLanguageModel

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

path, vision, dtype = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
base = status("VmRSS")
config, rules = read_config(path)
model = VisionLanguageModel(config, vision=vision).to(getattr(torch, dtype))
load_weights(model, path, rules)
gc.collect()
params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(json.dumps({"peak_rss_mb": status("VmHWM"), "load_rss_mb": status("VmRSS") - base, "param_mb": params}))
"""


def probe(path: Path, vision: bool, dtype: str) -> dict[str, float]:
    """Load in a fresh interpreter and return its memory figures."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), "1" if vision else "0", dtype],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_llava_checkpoint(path)
        full, text = probe(path, True, args.dtype), probe(path, False, args.dtype)
    print(f"{'deployment':<12} {'params MB':>10} {'peak RSS MB':>12} {'added by load MB':>17}")
    for name, row in (("full", full), ("text-only", text)):
        print(f"{name:<12} {row['param_mb']:>10.1f} {row['peak_rss_mb']:>12.1f} {row['load_rss_mb']:>17.1f}")
    for key, label in (
        ("param_mb", "parameters"),
        ("load_rss_mb", "resident memory added by the loaded model"),
        ("peak_rss_mb", "peak RSS"),
    ):
        print(f"text-only saves {100 * (1 - text[key] / full[key]):.1f}% of {label}")


if __name__ == "__main__":
    main()
