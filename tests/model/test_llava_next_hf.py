"""Oracle tests: AnyRes (LLaVA-NeXT) against transformers' LlavaNextProcessor and LlavaNextForConditionalGeneration.

The processor comparison uses transformers' PIL image processor, the backend vlbridge's arithmetic follows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlbridge
from hf_fixtures import assert_greedy_matches, random_image
from vlbridge.errors import CheckpointError

transformers = pytest.importorskip("transformers")

PROMPT = "USER: <image>\nwhat colour is the circle? ASSISTANT:"
# (width, height): squares, odd aspect ratios, and sizes one pixel around the 32 px tile and pinpoint boundaries
SIZES = [
    (32, 32), (31, 33), (33, 31), (64, 32), (63, 32), (65, 32), (32, 64), (32, 63), (64, 64), (65, 63),
    (96, 32), (97, 32), (95, 33), (32, 96), (20, 100), (100, 20), (45, 31), (3, 5), (1, 1), (128, 127),
    (301, 170), (17, 250),
]  # fmt: skip


def _hf_processor(path: Path):
    processor = transformers.LlavaNextProcessor.from_pretrained(path)
    processor.image_processor = transformers.LlavaNextImageProcessorPil.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return processor


def _hf(path: Path):
    return transformers.LlavaNextForConditionalGeneration.from_pretrained(path).eval(), _hf_processor(path)


def _assert_same_inputs(ours: dict, theirs: dict) -> None:
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(ours["image_sizes"], theirs["image_sizes"])
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert (ours["pixel_values"] - theirs["pixel_values"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("size", SIZES)
def test_processor_matches_transformers(size: tuple[int, int], llava_next_dir: Path) -> None:
    _, ours_proc = vlbridge.load(llava_next_dir)
    image = random_image(sum(size), size)
    ours = ours_proc(text=PROMPT, images=[image], return_tensors="pt")
    theirs = _hf_processor(llava_next_dir)(text=[PROMPT], images=[image], return_tensors="pt")
    _assert_same_inputs(ours, theirs)


def _compare(path: Path, prompts: list[str], images: list[Image.Image]) -> None:
    hf_model, hf_proc = _hf(path)
    model, proc = vlbridge.load(path)
    ours = proc(text=prompts, images=images, return_tensors="pt")
    theirs = hf_proc(text=prompts, images=images, return_tensors="pt", padding=True)
    _assert_same_inputs(ours, theirs)
    with torch.no_grad():
        ref = hf_model(**theirs).logits
        got = model(**ours).logits
    keep = theirs["attention_mask"].bool()
    assert (got[keep] - ref[keep]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("layout", ["saved", "module"])
def test_logits_one_image(layout: str, llava_next_dir: Path, llava_next_module_keys_dir: Path) -> None:
    path = llava_next_dir if layout == "saved" else llava_next_module_keys_dir
    _compare(path, [PROMPT], [random_image(0, (71, 40))])


def test_logits_images_of_different_sizes_in_one_prompt(llava_next_dir: Path) -> None:
    prompt = "USER: <image> left, <image> middle, <image> right: how many objects? ASSISTANT:"
    _compare(
        llava_next_dir, [prompt], [random_image(1, (32, 32)), random_image(2, (50, 130)), random_image(3, (90, 41))]
    )


def test_logits_left_padded_batch(llava_next_dir: Path) -> None:
    prompts = ["USER: <image>\ndescribe the image ASSISTANT:", "USER: <image> how many? ASSISTANT: three objects"]
    _compare(llava_next_dir, prompts, [random_image(4, (64, 64)), random_image(5, (33, 95))])


def test_greedy_generation_matches_transformers(llava_next_dir: Path) -> None:
    hf_model, hf_proc = _hf(llava_next_dir)
    model, proc = vlbridge.load(llava_next_dir)
    images = [random_image(6, (40, 90)), random_image(7, (100, 60))]
    prompts = ["USER: <image>\nwhat colour? ASSISTANT:", "USER: <image> describe the image in detail ASSISTANT:"]
    assert_greedy_matches(hf_model, hf_proc, model, proc, prompts, images)


def test_text_only_load_reads_no_newline(llava_next_dir: Path) -> None:
    model, processor = vlbridge.load(llava_next_dir, vision=False)
    assert not hasattr(model, "image_newline") and not processor.has_vision


def test_llava_next_config_without_pinpoints_is_refused(llava_next_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(llava_next_dir, tmp_path / "copy"))
    raw = json.loads((copy / "config.json").read_text())
    del raw["image_grid_pinpoints"]
    (copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="without image_grid_pinpoints"):
        vlbridge.load(copy)
