"""Datasets for pre-training the parts of a from-scratch model (SPEC section 4, stage 0).

- `TextDataset`: causal-LM pre-training of the text model on plain text (e.g. `conversation_texts(records)`),
  every token supervised. By default documents are packed GPT-style (each tokenised with the tokenizer's own
  BOS, closed by EOS, concatenated and cut into blocks of `max_length`), so no token is spent on padding;
  `pack=False` keeps one document per sample, truncated (and counted).
- `ImageTextDataset`: (image, caption) pairs for CLIP-style contrastive pre-training of the vision encoder
  (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021); the caption is
  a record's assistant replies joined by spaces (the caption itself for stage-1 caption data).
  `collate_image_text` batches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlbridge.data.collate import fixed_image_side, pad
from vlbridge.data.hygiene.augment import Augmenter, EpochAugmented, sources
from vlbridge.data.llava_json import Record
from vlbridge.errors import ConfigError, DataError, ImageError, ModalityError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import Processor


class TextDataset(Dataset):
    """Plain texts -> {"input_ids", "labels"} with every token supervised; collate with `collate.collate`."""

    def __init__(self, texts: Sequence[str], tokenizer: Tokenizer, max_length: int, pack: bool = True) -> None:
        """Tokenise `texts` now; `n_truncated` counts documents cut to `max_length` (only when not packing)."""
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        docs = [ids + eos for ids in tokenizer.encode_batch(list(texts))]
        self.n_truncated = 0
        if pack:
            stream = [token for doc in docs for token in doc]
            blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
        else:
            self.n_truncated = sum(len(doc) > max_length for doc in docs)
            blocks = [doc[:max_length] for doc in docs]
        self._blocks = [torch.tensor(block, dtype=torch.long) for block in blocks if len(block) >= 2]

    def __len__(self) -> int:
        return len(self._blocks)

    def lengths(self) -> list[int]:
        """Token length of every sample (for length-grouped batches)."""
        return [len(block) for block in self._blocks]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self._blocks[index]
        return {"input_ids": ids, "labels": ids.clone()}


def caption(record: Record) -> str:
    """A record's caption for contrastive training and scoring: its assistant replies joined by spaces."""
    return " ".join(t["value"] for t in record.conversations if t["from"] == "gpt")


class ImageTextDataset(Dataset, EpochAugmented):
    """Single-image LLaVA records -> {"pixel_values" (3, H, W), "input_ids" (T,)} for contrastive pre-training."""

    def __init__(
        self,
        records: Sequence[Record],
        image_root: str | Path,
        processor: Processor,
        max_length: int,
        augment: Augmenter | None = None,
    ) -> None:
        """Records without exactly one image are left out (`n_skipped`); captions longer than `max_length` are
        cut (`n_truncated`); `augment` (training only) transforms each image as it is read."""
        if not processor.has_vision:
            raise ModalityError("contrastive pre-training needs a processor with an image processor (vision=True)")
        if max_length < 1:
            raise ConfigError(f"max_length must be at least 1 token, got {max_length}")
        fixed_image_side(processor)  # images are stacked, so they must come out one size
        self.image_root = Path(image_root)
        self.processor = processor
        self.augment = augment
        usable = [r for r in records if len(r.images) == 1]
        self.n_skipped = len(records) - len(usable)
        captions = [caption(r) for r in usable]
        ids = processor.tokenizer.encode_batch(captions)
        self.n_truncated = sum(len(seq) > max_length for seq in ids)
        self._pairs = [
            (r, torch.tensor(seq[:max_length], dtype=torch.long)) for r, seq in zip(usable, ids, strict=True)
        ]

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record, input_ids = self._pairs[index]
        try:
            image_processor = self.processor.image_processor
            (image,) = sources([self.image_root / record.images[0]], self.augment, image_processor.config, index)
            pixel_values = image_processor.preprocess_one(image)
        except ImageError as err:
            raise DataError(f"record {record.id!r}: {err}", record.source, record.line) from None
        return {"pixel_values": pixel_values, "input_ids": input_ids}


def collate_image_text(
    batch: Sequence[dict[str, torch.Tensor]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """pixel_values (B, 3, H, W), input_ids and attention_mask (B, T) for a contrastive batch."""
    if not batch:
        raise DataError("cannot collate an empty batch")
    input_ids = [sample["input_ids"] for sample in batch]
    return {
        "pixel_values": torch.stack([sample["pixel_values"] for sample in batch]),
        "input_ids": pad(input_ids, pad_token_id, padding_side),
        "attention_mask": pad([torch.ones_like(ids) for ids in input_ids], 0, padding_side),
    }
