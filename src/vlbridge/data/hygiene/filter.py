"""Filtering image-caption pairs by contrastive similarity (LLaVA-NeXT's data recipe; LAION's CLIP-score filter).

A pair is scored by a contrastive image-text model (`ContrastiveScorer`: a model and the head the `contrastive`
objective trained, vlbridge.model.contrastive) and dropped below a threshold. The score is normalised so a threshold
means the same for every model and dataset:

    score(i) = exp(s * a_i) / (exp(s * a_i) + mean_j exp(s * b_ij))

where a_i is the cosine similarity of image i and its own caption, b_ij that of image i and caption j of a contrast
set (up to `contrast` distinct captions of the same file, sampled with `seed`, every one different in text from
caption i) and s the head's learned inverse temperature (CLIP's logit scale, clamped at 100). It is the model's own
probability, in the calibration its InfoNCE training gave it, that the image goes with its caption rather than with
a caption of the dataset drawn at random: 0.5 is no preference (what a caption unrelated to its image gets on
average), 1 a certain match. The default threshold 0.7 keeps a pair when the model gives its own caption at least
7:3 odds over a random one; a raw cosine has no such meaning (its scale differs from model to model and CLIP's
matched pairs sit near 0.3), and a softmax over a batch depends on what else is in the batch.

Records without exactly one image are not image-caption pairs: they are kept, unscored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vlbridge.data.collate import pad, pad_id
from vlbridge.data.datasets import ImageTextDataset, caption, collate_image_text
from vlbridge.data.llava_json import Record
from vlbridge.errors import ConfigError, DataError
from vlbridge.files import read_json_object
from vlbridge.model import io
from vlbridge.model.contrastive import HEAD_FILE, ContrastiveHead
from vlbridge.model.processor import Processor
from vlbridge.model.vlm import VisionLanguageModel

DEFAULT_THRESHOLD = 0.7
PairScorer = Callable[[Sequence[Record], Path], list[float]]
"""(single-image records, the image folder) -> one normalised score in [0, 1] per record."""


@dataclass(frozen=True)
class Dropped:
    """A record the filter left out: its id, its score and why."""

    id: str
    score: float
    reason: str


class ContrastiveScorer:
    """Scores pairs with a VisionLanguageModel and a trained `ContrastiveHead` (the module docstring's score)."""

    def __init__(
        self,
        model: VisionLanguageModel,
        processor: Processor,
        head: ContrastiveHead,
        batch_size: int = 64,
        max_length: int = 256,
        contrast: int = 1024,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or max_length < 1 or contrast < 2:
            raise ConfigError(
                f"batch_size and max_length must be >= 1 and contrast >= 2, got {batch_size}, {max_length}, {contrast}"
            )
        self.model, self.processor, self.head = model.eval(), processor, head.eval()
        self.batch_size, self.max_length, self.contrast, self.seed = batch_size, max_length, contrast, seed

    @torch.inference_mode()
    def _images(self, records: Sequence[Record], image_root: Path) -> torch.Tensor:
        """Unit image embeddings (N, E), in record order."""
        pairs = ImageTextDataset(records, image_root, self.processor, self.max_length)
        collate = partial(collate_image_text, pad_token_id=pad_id(self.processor))
        loader = DataLoader(pairs, batch_size=self.batch_size, collate_fn=collate)
        batches = tqdm(loader, desc="images", unit="batch", mininterval=0.5)
        return torch.cat([self.head.embed_images(self.model, b["pixel_values"]).float() for b in batches])

    @torch.inference_mode()
    def _texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit caption embeddings (M, E)."""
        ids = [torch.tensor(seq[: self.max_length]) for seq in self.processor.tokenizer.encode_batch(list(texts))]
        out = []
        for start in tqdm(range(0, len(ids), self.batch_size), desc="captions", unit="batch", mininterval=0.5):
            chunk = ids[start : start + self.batch_size]
            input_ids = pad(chunk, pad_id(self.processor))
            mask = pad([torch.ones_like(seq) for seq in chunk], 0)
            out.append(self.head.embed_texts(self.model, input_ids, mask).float())
        return torch.cat(out)

    def __call__(self, records: Sequence[Record], image_root: Path) -> list[float]:
        """One score per record (each must have exactly one image); DataError when the file has fewer than two
        distinct captions (nothing to contrast a caption with)."""
        captions = [caption(r) for r in records]
        distinct = sorted(set(captions))
        if len(distinct) < 2:
            raise DataError(
                "the records hold fewer than two distinct captions: no caption can be contrasted with another"
            )
        where = {text: i for i, text in enumerate(distinct)}
        own = torch.tensor([where[c] for c in captions])  # (N,) index of each record's caption in `distinct`
        rng = np.random.default_rng(self.seed)
        pool = torch.from_numpy(np.sort(rng.permutation(len(distinct))[: self.contrast]))  # (C,) contrast captions
        texts = self._texts(distinct)  # (M, E)
        images = self._images(records, image_root)  # (N, E)
        scale = float(self.head.scale().detach())
        logits_own = scale * (images * texts[own]).sum(-1)  # (N,)
        logits = scale * images @ texts[pool].t()  # (N, C)
        others = own.unsqueeze(1) != pool.unsqueeze(0)  # (N, C): a contrast caption of another text
        counts = others.sum(1)  # (N,) >= 1: `pool` holds >= 2 distinct texts
        log_mean = torch.logsumexp(logits.masked_fill(~others, -math.inf), dim=1) - counts.float().log()
        return torch.sigmoid(logits_own - log_mean).tolist()


def load_scorer(folder: str | Path, **options: int) -> ContrastiveScorer:
    """The scorer of a stage trained by the `contrastive` objective: `folder` holds model/ and the head's file.
    A CLIP or SigLIP checkpoint is refused with ConfigError: vlbridge runs their vision half only (their text
    transformer would need transformers at run time, which the core never imports)."""
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        model_type = str(read_json_object(config).get("model_type", ""))
        if model_type.startswith(("clip", "siglip")):
            raise ConfigError(
                f"{folder} is a {model_type} checkpoint: vlbridge runs the vision half of CLIP/SigLIP but not their "
                "text encoder, which would need transformers at run time; score with a stage trained by the "
                "contrastive objective instead (`objective: contrastive` in a recipe; pass that stage's folder)"
            )
    if not (folder / "model").is_dir():
        raise ConfigError(
            f"{folder} holds no model/: pass the folder of a stage trained by the contrastive objective "
            f"(RUN_DIR/STAGE, holding model/ and {HEAD_FILE})"
        )
    head = ContrastiveHead.load(folder / HEAD_FILE)
    model, processor = io.load(folder / "model")
    return ContrastiveScorer(model, processor, head, **options)


def filter_pairs(
    records: Sequence[Record], image_root: Path, scorer: PairScorer, threshold: float = DEFAULT_THRESHOLD
) -> tuple[list[Record], list[Dropped]]:
    """(the records kept, in order; the single-image records scored below `threshold`, with score and reason)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"the threshold is a normalised score in [0, 1], got {threshold}")
    pairs = [r for r in records if len(r.images) == 1]
    scores = dict(zip((id(r) for r in pairs), scorer(pairs, image_root), strict=True)) if pairs else {}
    kept, dropped = [], []
    for record in records:
        score = scores.get(id(record))
        if score is not None and score < threshold:
            dropped.append(Dropped(record.id, score, f"image-caption score {score:.3f} < threshold {threshold}"))
        else:
            kept.append(record)
    return kept, dropped
