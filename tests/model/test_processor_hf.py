"""Oracle tests: our Processor builds the same input_ids, attention_mask and pixel_values as transformers'
LlavaProcessor (CLIP image processor, `<image>` expanded to (side / patch)^2 tokens: `default` strategy, one CLS).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from tokenizers import AddedToken, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as BackendTokenizer
from transformers import AutoTokenizer, CLIPImageProcessorPil, LlamaTokenizer, LlavaProcessor

from hf_fixtures import make_tokenizer
from vlbridge.config import ImageProcessorConfig
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import Processor
from vlbridge.vision.processor import ImageProcessor

SIDE, PATCH = 28, 14
PROMPT = "USER: <image>\nwhat colour is the circle? ASSISTANT:"
CASES = {
    "one_image": ([PROMPT], 1),
    "two_images_one_prompt": (["USER: <image> a red circle <image>\nhow many objects are there? ASSISTANT:"], 2),
    "batch_of_two": ([PROMPT, "USER: <image><image> describe the image ASSISTANT: a"], 3),
    "batch_with_text_only_prompt": (["the triangle is green", PROMPT], 1),
}


def _llama_style(path: Path) -> None:
    """A SentencePiece-style (Metaspace, byte fallback, BOS) tokenizer saved by transformers' LlamaTokenizer."""
    tok = BackendTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(
        [PROMPT, "a red circle; how many objects?"] * 4, trainers.BpeTrainer(vocab_size=320, special_tokens=specials)
    )
    model = json.loads(tok.to_str())["model"]
    hf = LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], add_bos_token=True)
    hf.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    hf.pad_token = "<unk>"
    hf.save_pretrained(path)


def _byte_level(path: Path) -> None:
    hf = make_tokenizer()
    hf.pad_token = "</s>"
    hf.save_pretrained(path)


@pytest.fixture(scope="module", params=["byte_level", "llama_style"])
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param)
    (_byte_level if request.param == "byte_level" else _llama_style)(path)
    return path


def _images(n: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(n)
    sizes = [(40, 30), (25, 50), (28, 28)]
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def _pair(path: Path) -> tuple[Processor, LlavaProcessor]:
    hf_images = CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    hf = LlavaProcessor(
        image_processor=hf_images,
        tokenizer=AutoTokenizer.from_pretrained(path),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    tokenizer = Tokenizer.from_dir(path)
    ours = Processor(
        tokenizer,
        ImageProcessor(ImageProcessorConfig(size=SIDE, crop_size=SIDE)),
        image_token_id=tokenizer.token_to_id("<image>"),
        tokens_per_image=lambda h, w: (h // PATCH) * (w // PATCH),
    )
    return ours, hf


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_inputs_match_llava_processor(tokenizer_dir: Path, case: str, side: str) -> None:
    prompts, n_images = CASES[case]
    ours, hf = _pair(tokenizer_dir)
    images = _images(n_images)
    expected = hf(text=prompts, images=images, return_tensors="pt", padding=True, padding_side=side)
    got = ours(prompts, images=images, padding_side=side)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["attention_mask"], expected["attention_mask"])
    assert got["pixel_values"].shape == expected["pixel_values"].shape
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    assert (got["input_ids"] == ours.image_token_id).sum() == n_images * (SIDE // PATCH) ** 2


def test_chat_template_prompt_matches(tokenizer_dir: Path) -> None:
    ours, hf = _pair(tokenizer_dir)
    messages = [{"role": "user", "content": "<image>\nwhat colour is the circle?"}]
    hf.tokenizer.chat_template = ours.tokenizer.chat_template = make_tokenizer().chat_template
    prompt = ours.apply_chat_template(messages)
    assert prompt == hf.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = _images(1)
    expected = hf(text=prompt, images=images, return_tensors="pt")
    assert torch.equal(ours(prompt, images=images)["input_ids"], expected["input_ids"])
