"""Pre-training datasets: packed causal-LM text blocks, and image-caption pairs for contrastive learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlbridge.config import ImageProcessorConfig
from vlbridge.data.collate import collate
from vlbridge.data.datasets import ImageTextDataset, TextDataset, collate_image_text
from vlbridge.data.llava_json import Record, conversation_texts, load_llava, parse_record
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.errors import ModalityError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.lm.tokenizer_train import train_tokenizer
from vlbridge.model.processor import Processor
from vlbridge.vision.processor import ImageProcessor

SIDE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthOptions(n=12, seed=1, image_size=48))
    return out


@pytest.fixture(scope="module")
def captions(root: Path) -> list[Record]:
    return load_llava(root / "captions.json").items


@pytest.fixture(scope="module")
def tokenizer(captions: list[Record]) -> Tokenizer:
    return train_tokenizer(conversation_texts(captions), 320)


def processor(tokenizer: Tokenizer, vision: bool = True) -> Processor:
    images = ImageProcessor(ImageProcessorConfig(size=SIDE, crop_size=SIDE)) if vision else None
    image_id = tokenizer.token_to_id("<image>")
    return Processor(tokenizer, images, image_token_id=image_id, tokens_per_image=lambda h, w: 4)


def test_packed_text_blocks_cover_every_document(captions: list[Record], tokenizer: Tokenizer) -> None:
    texts = conversation_texts(captions)
    dataset = TextDataset(texts, tokenizer, max_length=16)
    stream = [t for text in texts for t in [*tokenizer.encode(text), tokenizer.eos_token_id]]
    blocks = [dataset[i]["input_ids"] for i in range(len(dataset))]
    assert all(len(b) == 16 for b in blocks[:-1]) and 2 <= len(blocks[-1]) <= 16
    assert torch.cat(blocks).tolist() == stream[: sum(len(b) for b in blocks)]
    assert len(stream) - sum(len(b) for b in blocks) < 2  # only a 1-token tail can be left out
    assert stream[0] == tokenizer.bos_token_id and stream.count(tokenizer.eos_token_id) == len(texts)
    assert all(torch.equal(dataset[i]["labels"], dataset[i]["input_ids"]) for i in range(len(dataset)))
    assert dataset.n_truncated == 0


def test_unpacked_text_truncates_and_counts(tokenizer: Tokenizer) -> None:
    texts = ["a red circle and a blue square", "a"]
    dataset = TextDataset(texts, tokenizer, max_length=4, pack=False)
    assert dataset.n_truncated == 1 and len(dataset) == 2
    assert dataset[0]["input_ids"].tolist() == tokenizer.encode(texts[0])[:4]
    assert dataset[1]["input_ids"].tolist() == [
        tokenizer.bos_token_id,
        tokenizer.token_to_id("a"),
        tokenizer.eos_token_id,
    ]
    batch = collate([dataset[0], dataset[1]], tokenizer.pad_token_id)
    assert batch["labels"][1].tolist()[-1] == -100 and "pixel_values" not in batch


def test_image_text_pairs_and_collate(captions: list[Record], tokenizer: Tokenizer, root: Path) -> None:
    text_only = parse_record({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, 1)
    dataset = ImageTextDataset([*captions, text_only], root, processor(tokenizer), max_length=512)
    assert len(dataset) == len(captions) and dataset.n_skipped == 1 and dataset.n_truncated == 0
    item = dataset[0]
    assert item["pixel_values"].shape == (3, SIDE, SIDE)
    caption = captions[0].conversations[1]["value"]
    assert tokenizer.decode(item["input_ids"]) == caption
    batch = collate_image_text([dataset[0], dataset[1]], tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (2, 3, SIDE, SIDE)
    lengths = [len(dataset[i]["input_ids"]) for i in (0, 1)]
    assert batch["input_ids"].shape == (2, max(lengths)) and batch["attention_mask"].sum(1).tolist() == lengths
    short = ImageTextDataset(captions, root, processor(tokenizer), max_length=3)
    assert short.n_truncated == len(captions) and len(short[0]["input_ids"]) == 3


def test_image_text_needs_vision(captions: list[Record], tokenizer: Tokenizer, root: Path) -> None:
    with pytest.raises(ModalityError, match="image processor"):
        ImageTextDataset(captions, root, processor(tokenizer, vision=False), max_length=8)
