"""Oracle tests: vlbridge's VisionLanguageModel against transformers' LlavaForConditionalGeneration, same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import vlbridge
from hf_fixtures import assert_greedy_matches, random_image
from vlbridge.deploy.export_hf import export_llava_hf

transformers = pytest.importorskip("transformers")


def _hf(path: Path):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = transformers.LlavaProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


def _compare(path: Path, prompts: list[str], images: list[Image.Image]) -> None:
    hf_model, hf_proc = _hf(path)
    model, proc = vlbridge.load(path)
    ours = proc(text=prompts if len(prompts) > 1 else prompts[0], images=images, return_tensors="pt")
    theirs = hf_proc(text=prompts, images=images, return_tensors="pt", padding=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert (ours["pixel_values"] - theirs["pixel_values"]).abs().max() <= 1e-5
    with torch.no_grad():
        ref = hf_model(**theirs).logits
        got = model(**ours).logits
    keep = theirs["attention_mask"].bool()
    assert (got[keep] - ref[keep]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_logits_one_image(family: str, clip_llava_dir: Path, siglip_llava_dir: Path) -> None:
    path = clip_llava_dir if family == "clip" else siglip_llava_dir
    _compare(path, ["USER: <image>\nwhat colour is the circle? ASSISTANT:"], [random_image(0, (45, 31))])


def test_siglip_tower_with_llavas_default_strategy_drops_its_first_patch(tmp_path: Path) -> None:
    """llava's "default" drops the first token even from a SigLIP tower, which has no CLS: one patch fewer."""
    from hf_fixtures import tiny_llava

    path = tiny_llava(tmp_path / "siglip-default", family="siglip", strategy="default")
    model, _ = vlbridge.load(path)
    assert model.config.vision.select_strategy == "drop_first"
    prompt, image = "USER: <image>\nwhat colour is the circle? ASSISTANT:", random_image(3, (40, 36))
    _compare(path, [prompt], [image])
    exported = export_llava_hf(model, tmp_path / "exported")  # and back out as llava's "default" again
    _compare(exported, [prompt], [image])


def test_logits_two_images_in_one_prompt(clip_llava_dir: Path) -> None:
    prompt = "USER: <image> left, <image> right: how many objects? ASSISTANT:"
    _compare(clip_llava_dir, [prompt], [random_image(1, (32, 32)), random_image(2, (50, 70))])


def test_logits_left_padded_batch(siglip_llava_dir: Path) -> None:
    prompts = ["USER: <image>\ndescribe the image ASSISTANT:", "USER: <image> how many? ASSISTANT: three objects"]
    _compare(siglip_llava_dir, prompts, [random_image(3, (40, 40)), random_image(4, (33, 61))])


def test_greedy_generation_matches_transformers(clip_llava_dir: Path) -> None:
    hf_model, hf_proc = _hf(clip_llava_dir)
    model, proc = vlbridge.load(clip_llava_dir)
    images = [random_image(5, (40, 40)), random_image(6, (64, 48))]
    prompts = ["USER: <image>\nwhat colour? ASSISTANT:", "USER: <image> describe the image in detail ASSISTANT:"]
    assert_greedy_matches(hf_model, hf_proc, model, proc, prompts, images)


def test_text_only_mode_equals_full_model_and_reads_no_vision(clip_llava_dir: Path) -> None:
    full, proc_full = vlbridge.load(clip_llava_dir)
    text, proc_text = vlbridge.load(clip_llava_dir, vision=False)
    assert text.vision_encoder is None and text.connector is None
    assert not any(k.startswith(("vision_encoder.", "connector.")) for k in text.state_dict())
    prompt = "USER: how many objects are there? ASSISTANT:"
    inputs = proc_text(text=prompt, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], proc_full(text=prompt, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        assert torch.equal(text(**inputs).logits, full(**inputs).logits)
    n_full = sum(p.numel() for p in full.parameters())
    n_text = sum(p.numel() for p in text.parameters())
    assert n_text < n_full
