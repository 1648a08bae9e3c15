"""How far the default's LM gets on the synthetic questions when its visual tokens are perfect.

The vision encoder and connector are replaced by ideal visual tokens: for each of the 9 regions, the sum of one
learned embedding per label the region has (`Scene.region_labels()`: what it holds, its position, the object's
shape, colour and size, the word), in the slots where the model's own visual tokens go. Everything else is the
recipe's: its LM configuration and seeded init, a BPE tokenizer trained as the pipeline trains one, the same
conversation templates and label masking (`SupervisedDataset`). Scenes are sampled fresh (no images are rendered),
so the training set can be far larger than the recipe's.

What it tells: how far the LM gets on this data mix (by default 10% captions, one question per sample) when vision
is not in the way; the recipe's own mix differs, so it is not a bound on the recipe's score. Accuracy is
teacher-forced exact match of the whole reply (answer and end-of-turn marker): the reply greedy decoding would
produce, without decoding. Held-out scenes come from their own seeds.

    python experiments/ideal_vision.py --steps 1800 --turns 1 1 --captions 0.1 --template qa
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from vlbridge.data.collate import SupervisedDataset, collate
from vlbridge.data.llava_json import Record
from vlbridge.data.synthetic.scenes import COLOURS, POSITIONS, SHAPES, SIZES, WORDS, Scene, derive_seed
from vlbridge.data.synthetic.tasks import TYPES, conversation, sample_item, stratified_answer
from vlbridge.data.synthetic.writer import train_item
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.lm.tokenizer_train import train_tokenizer
from vlbridge.model.processor import processor_for
from vlbridge.train.pipeline import initial_model
from vlbridge.train.recipe import load_recipe

LABELS: dict[str, tuple[str, ...]] = {
    "kind": ("empty", "object", "text"),
    "position": POSITIONS,
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "word": WORDS,
}
REGIONS = len(POSITIONS)


class IdealTokens(torch.nn.Module):
    """(N, 9, len(LABELS)) label indices -> (N, 9, D): per region, the sum of one embedding per label it has."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.Embedding(len(v) + 1, width) for v in LABELS.values())
        for table in self.tables:  # the last row of each is "not applicable here"
            torch.nn.init.normal_(table.weight, std=1 / math.sqrt(len(LABELS)))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return sum(table(labels[..., i]) for i, table in enumerate(self.tables))


def label_indices(scene: Scene) -> torch.Tensor:
    """(9, len(LABELS)) indices of each region's labels; len(values) where a label does not apply."""
    labels = scene.region_labels()
    return torch.tensor(
        [[v.index(labels[k][r]) if labels[k][r] is not None else len(v) for k, v in LABELS.items()] for r in range(9)]
    )


def training_records(n: int, seed: int, turns: tuple[int, int], captions: float, types: set[str]) -> list:
    """(record, scene labels) for n training scenes: a caption with probability `captions`, else the questions."""
    counts: dict[str, Counter[str]] = {t: Counter() for t in TYPES}
    rng = random.Random(seed)
    out = []
    for index in range(n):
        scene, qas, described = train_item(index, seed, counts, turns)
        qas = [qa for qa in qas if qa.type in types]
        turns_of = described if rng.random() < captions else conversation(qas)
        if turns_of:
            out.append((Record(str(index), ("ideal.png",), tuple(turns_of)), label_indices(scene)))
    return out


def held_out(n: int, seed: int, types: list[str]) -> list:
    """(record, scene labels, type) for n single questions, types in turn, answers dealt evenly per type."""
    out = []
    for index in range(n):
        kind = types[index % len(types)]
        rng = random.Random(derive_seed(seed, "ideal-vision", index))
        scene, qa = sample_item(kind, stratified_answer(kind, index // len(types), seed, "ideal-vision"), rng)
        out.append((Record(str(index), ("ideal.png",), tuple(conversation([qa]))), label_indices(scene), kind))
    return out


class Runner:
    """The LM with ideal visual tokens spliced at its image-token positions."""

    def __init__(self, config: Path, template: str, texts: list[str], bf16: bool) -> None:
        recipe = load_recipe(config)
        spec = recipe.tokenizer
        tokenizer = train_tokenizer(texts, spec.vocab_size, template=spec.template, add_bos=spec.add_bos)
        torch.manual_seed(recipe.seed)
        model = initial_model(recipe, tokenizer)
        self.processor = processor_for(model, tokenizer)
        side = model.config.image_processor.crop_size
        if self.processor.tokens_per_image(side, side) != REGIONS:
            raise SystemExit(
                f"the recipe's model makes {self.processor.tokens_per_image(side, side)} visual tokens "
                f"per image; ideal tokens stand in for one per region ({REGIONS})"
            )
        self.lm = model.language_model
        self.tokens = IdealTokens(self.lm.hidden_size)
        self.template = template
        self.bf16 = bf16

    def dataset(self, records: list[Record]) -> SupervisedDataset:
        data = SupervisedDataset(records, ".", self.processor, self.template, max_length=384)
        assert data.stats.kept == len(records), f"samples dropped: {data.stats.dropped}"
        return data

    def logits(self, data: SupervisedDataset, labels: list[torch.Tensor], ids: list[int]) -> tuple:
        """(logits, labels) of one batch."""
        pairs = [data.token_ids(i) for i in ids]
        batch = collate([{"input_ids": x, "labels": y} for x, y in pairs], pad_token_id=0)
        mask = batch["input_ids"] == self.processor.image_token_id
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            embeds = self.lm.embed(batch["input_ids"].masked_fill(mask, 0))
            visual = self.tokens(torch.stack([labels[i] for i in ids])).to(embeds.dtype)
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), visual.reshape(-1, visual.shape[-1]))
            return self.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]), batch["labels"]

    def accuracy(self, data: SupervisedDataset, labels: list[torch.Tensor], kinds: list[str]) -> dict[str, float]:
        """Per type (and overall): the share of replies predicted right in every token."""
        right, total = Counter(), Counter(kinds)
        self.lm.eval()
        with torch.no_grad():
            for start in range(0, len(kinds), 100):
                ids = list(range(start, min(start + 100, len(kinds))))
                logits, target = self.logits(data, labels, ids)
                target = target[:, 1:]
                whole = ((logits[:, :-1].argmax(-1) == target) | (target == IGNORE_INDEX)).all(-1)
                right.update(kinds[i] for i, ok in zip(ids, whole.tolist(), strict=True) if ok)
        self.lm.train()
        return {"overall": sum(right.values()) / len(kinds)} | {k: right[k] / total[k] for k in total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"), help="recipe: LM and tokenizer")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--template", default="qa", help="conversation template of the training and test samples")
    parser.add_argument("--turns", type=int, nargs=2, default=(1, 1), help="question turns per training scene")
    parser.add_argument("--captions", type=float, default=0.1, help="share of training samples that are captions")
    parser.add_argument("--n-train", type=int, default=60_000, help="training scenes (each used for one sample)")
    parser.add_argument("--types", default=",".join(TYPES), help="question types to train and test on")
    parser.add_argument("--every", type=int, default=300, help="score the held-out questions every N steps")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = parser.parse_args()
    types = args.types.split(",")
    started = time.perf_counter()
    train = training_records(args.n_train, 1, tuple(args.turns), args.captions, set(types))
    test = held_out(900, 2, types)
    texts = ["\n".join(t["value"] for t in record.conversations) for record, _ in train]
    runner = Runner(args.config, args.template, texts, bf16=not args.fp32)
    train_data, test_data = runner.dataset([r for r, _ in train]), runner.dataset([r for r, _, _ in test])
    train_labels, test_labels = [x for _, x in train], [x for _, x, _ in test]
    kinds = [k for _, _, k in test]
    print(f"{len(train)} training samples, {len(test)} held-out questions ({time.perf_counter() - started:.0f} s)")
    params = [*runner.lm.parameters(), *runner.tokens.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    order, rng, start = [], random.Random(0), time.perf_counter()
    print("step  seconds  " + "  ".join(f"{k[:8]:>8s}" for k in ["overall", *types]))
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            order = rng.sample(range(len(train)), len(train))
        ids, order = order[: args.batch_size], order[args.batch_size :]
        logits, target = runner.logits(train_data, train_labels, ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), target[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            acc = runner.accuracy(test_data, test_labels, kinds)
            row = "  ".join(f"{acc[k]:8.3f}" for k in ["overall", *types])
            print(f"{step:4d}  {time.perf_counter() - start:7.0f}  {row}", flush=True)


if __name__ == "__main__":
    main()
