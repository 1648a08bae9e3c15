"""What the default's visual tokens carry, against what its vision encoder can learn when it is told directly.

Two measurements on a synthetic-world dataset whose images align with the model's patch grid (one visual token, or
one k x k block of them, per 3x3 region):

1. **Probe** (`--model`): one linear probe shared by all region tokens, on the visual tokens as the LM receives them
   (after the connector, each scaled to unit length). It is fitted on the first 1200 images of scenes.jsonl and
   scored on the next 300 (training images of the model, unseen by the probe), per attribute, on the regions that
   hold an object (position: on every region, its own; word: on the region the text is drawn in). A key an
   attention head can match must be such a direction, the same at every position: "What colour is the circle?"
   needs shape to be one, and "What colour is the object in the top left?" needs the token to say where it is.
2. **Ceiling** (`--supervised-steps N`): a fresh vision encoder of the model's configuration, trained for N steps
   with a per-region linear head on the shape labels themselves (batch 32, AdamW at `--lr`), scored on validation
   images every 100 steps. It shows how fast the encoder learns shape when the signal is direct rather than passed
   back through the LM's caption and question losses.

    python experiments/shape_perception.py --model runs/default --data runs/default/data --supervised-steps 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import vlbridge
from vlbridge.data.synthetic.scenes import COLOURS, GRID, POSITIONS, SHAPES, SIZES, WORDS, Scene
from vlbridge.errors import ConfigError
from vlbridge.train.objectives import region_pool
from vlbridge.vision.vit import ViT

FIT, SCORE = 1200, 300
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
    "word": WORDS,
}


def region_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(N, S*S, D) visual tokens -> (N, 9, D): each region's tokens averaged; the grid side must be a multiple of 3."""
    try:
        return region_pool(tokens, GRID)
    except ConfigError as err:
        raise SystemExit(f"{err}; probe a model whose token grid side is a multiple of {GRID}") from None


def region_labels(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per attribute, (N, 9) class indices; regions without an object get -1."""
    labels = {name: torch.full((len(rows), GRID * GRID), -1) for name in ATTRIBUTES}
    for i, row in enumerate(rows):
        scene_labels = Scene.from_dict(row["scene"]).region_labels()
        for name, values in ATTRIBUTES.items():
            for cell, value in enumerate(scene_labels[name]):
                if value is not None:
                    labels[name][i, cell] = values.index(value)
    return labels


def visual_tokens(model: Any, processor: Any, data: Path, rows: list[dict[str, Any]]) -> torch.Tensor:
    """The LM-input visual tokens of each image, pooled per region and scaled to unit length."""
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(rows), 100):
            part = rows[start : start + 100]
            inputs = processor(
                text=["<image>"] * len(part), images=[str(data / r["image"]) for r in part], return_tensors="pt"
            )
            embeds, _ = model.embed(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
            image = inputs["input_ids"] == model.config.image_token_id
            chunks.append(region_grid(embeds[image].view(len(part), -1, embeds.shape[-1]).float()))
    tokens = torch.cat(chunks)
    return tokens / tokens.norm(dim=-1, keepdim=True)


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> float:
    """Fit one linear map shared by all regions on the first FIT images; accuracy on the next SCORE, objects only."""
    weight = torch.zeros(x.shape[-1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=1e-2)
    fit_x, fit_y = x[:FIT], y[:FIT]
    for _ in range(steps):
        loss = F.cross_entropy((fit_x @ weight + bias).reshape(-1, classes), fit_y.reshape(-1), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (x[FIT:] @ weight + bias).argmax(-1)
    held = y[FIT:]
    return (pred == held)[held >= 0].float().mean().item()


def supervised_ceiling(
    model: Any, processor: Any, data: Path, rows: list[dict[str, Any]], steps: int, lr: float
) -> None:
    """Train a fresh encoder of the model's vision config on region shapes directly; print validation accuracy."""
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"][:SCORE]
    train_x = processor.image_processor([data / r["image"] for r in train_rows])
    val_x = processor.image_processor([data / r["image"] for r in val_rows])
    train_y, val_y = region_labels(train_rows)["shape"], region_labels(val_rows)["shape"]
    torch.manual_seed(0)
    encoder = ViT(model.config.vision)
    head = torch.nn.Linear(encoder.hidden_size, len(SHAPES))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(train_x), (32,))
        logits = head(region_grid(encoder(train_x[batch])))
        loss = F.cross_entropy(logits.reshape(-1, len(SHAPES)), train_y[batch].reshape(-1), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                pred = head(region_grid(encoder(val_x))).argmax(-1)
            acc = (pred == val_y)[val_y >= 0].float().mean().item()
            elapsed = time.perf_counter() - start
            print(f"supervised step {step:5d}  loss {loss.item():.3f}  held-out shape {acc:.3f}  {elapsed:5.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained vlbridge model directory (e.g. runs/default)")
    parser.add_argument("--data", required=True, type=Path, help="its synthetic dataset folder")
    parser.add_argument("--supervised-steps", type=int, default=0, help="also train the direct-supervision ceiling")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.data / "scenes.jsonl").read_text().splitlines()]
    probed = rows[: FIT + SCORE]
    model, processor = vlbridge.load(args.model, vision=True)
    tokens = visual_tokens(model, processor, args.data, probed)
    labels = region_labels(probed)
    for name, values in ATTRIBUTES.items():
        accuracy = linear_probe(tokens, labels[name], len(values))
        print(f"linear probe shared by the region tokens: {name:6s} {accuracy:.3f}")
    if args.supervised_steps:
        supervised_ceiling(model, processor, args.data, rows, args.supervised_steps, args.lr)


if __name__ == "__main__":
    main()
