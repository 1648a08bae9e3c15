"""`vlbridge ship RUN_DIR --data DIR`: package a trained run as the embedded default, with a sample image and scores.

`vlbridge.load()` with no path, and so `vlbridge chat` and `vlbridge eval` with no `--model`, read what `ship`
writes. The weights are stored in bf16 (half the bytes of fp32; the package allows 20 MB) and load into fp32 unless
asked otherwise. The scores stored beside them are those of the stored weights on the run's held-out test set, so
the figures the README quotes are the figures of what ships.

    vlbridge ship RUN_DIR --data RUN_DIR/data [--dest DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from vlbridge.atomic import atomic_path, write_text
from vlbridge.data.synthetic.scenes import render_scene, sample_scene
from vlbridge.eval.runner import evaluate
from vlbridge.eval.tasks.synthetic import SyntheticTask
from vlbridge.model.io import default_model_dir, load

SAMPLE_SEED = 0  # the sample scene: four shapes (a large green cross in the center, ...) and the word "GO"
SCORES = "scores.json"
SAMPLE = "sample.png"


def sample_image() -> Path:
    """The bundled sample image the README's main job asks about."""
    return default_model_dir() / SAMPLE


def ship(run_dir: str | Path, data: str | Path, dest: str | Path | None = None) -> dict[str, Any]:
    """Store the run's model in bf16 at `dest` (default: the package's assets), render the sample image there and
    score the stored weights on `data`'s test split; returns the scores, also written to `dest`/scores.json."""
    dest = Path(dest) if dest is not None else default_model_dir()
    model, _ = load(run_dir)
    model.to(torch.bfloat16).save_pretrained(dest)
    side = json.loads((Path(data) / "stats.json").read_text())["image_size"]
    with atomic_path(dest / SAMPLE) as tmp:
        render_scene(sample_scene(SAMPLE_SEED), side).save(tmp, format="PNG")
    stored, processor = load(dest)
    with tempfile.TemporaryDirectory() as out:
        result = evaluate(stored, processor, SyntheticTask.from_folder(data), out)
    write_text(dest / SCORES, json.dumps(result.scores, indent=2) + "\n")
    return result.scores


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("ship", help="package a trained run as the embedded default (bf16, sample, scores)")
    parser.add_argument("run_dir", help="a finished `vlbridge train` run (or any vlbridge checkpoint)")
    parser.add_argument("--data", required=True, help="the synthetic dataset folder whose test split scores it")
    parser.add_argument("--dest", default=None, help="where to write it (default: the package's assets)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Package RUN_DIR as the embedded default and print its overall test accuracy."""
    scores = ship(args.run_dir, args.data, args.dest)
    print(f"shipped to {args.dest or default_model_dir()}: {scores['by_type']['overall']['accuracy']:.3f} overall")
    return 0
