"""Oracle tests: what `export` writes, transformers loads (strictly) and runs to vlbridge's inputs and logits.

Each source model's weights are perturbed first, so zero biases or unit norms (HF's init) cannot hide a wrong map.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import vlbridge
from hf_fixtures import tiny_llava
from vlbridge.config import ConnectorConfig
from vlbridge.deploy.export_hf import LLAVA_LAYOUTS, export
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.io import default_model_dir
from vlbridge.model.vlm import VisionLanguageModel

transformers = pytest.importorskip("transformers")

LOGITS_TOL = 1e-4  # the bar: float32 on both sides, summation order the only difference
PROMPTS = ["USER: <image>\nwhat colour is the circle? ASSISTANT:", "USER: how many? <image> ASSISTANT: three"]


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


IMAGES = [_image(0, (45, 31)), _image(1, (30, 52))]


@pytest.fixture(scope="module")
def qwen2_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SigLIP-tower llava-hf checkpoint whose LM is Qwen2 (q/k/v biases), tied embeddings."""
    return tiny_llava(tmp_path_factory.mktemp("qwen2_siglip"), family="siglip", tie=True, seed=2, text="qwen2")


@pytest.fixture(scope="module")
def mistral_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP-tower llava-hf checkpoint whose LM is Mistral."""
    return tiny_llava(tmp_path_factory.mktemp("mistral_clip"), family="clip", seed=3, text="mistral")


def _perturb(model: VisionLanguageModel, seed: int = 0) -> VisionLanguageModel:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _loaded(path: Path) -> tuple[VisionLanguageModel, object]:
    model, processor = vlbridge.load(path)
    return _perturb(model), processor


def _hf_llava(out: Path):
    auto = transformers.AutoConfig.from_pretrained(out).model_type == "llava_next"
    cls = transformers.LlavaNextForConditionalGeneration if auto else transformers.LlavaForConditionalGeneration
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    processor = transformers.AutoProcessor.from_pretrained(out)
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor


def _assert_parity(model: VisionLanguageModel, processor, out: Path, prompts: list[str], images: list) -> None:
    """transformers on `out` gives our input_ids, mask, pixel_values and logits; vlbridge.load(out) our logits."""
    hf_model, hf_processor = _hf_llava(out)
    ours = processor(text=prompts, images=images, return_tensors="pt")
    theirs = hf_processor(text=prompts, images=images, return_tensors="pt", padding=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert (ours["pixel_values"] - theirs["pixel_values"]).abs().max().item() <= 1e-6
    if "image_sizes" in theirs:
        assert torch.equal(ours["image_sizes"], theirs["image_sizes"])
    again, _ = vlbridge.load(out)
    with torch.no_grad():
        got = model(**ours).logits
        ref = hf_model(**theirs).logits
        back = again(**ours).logits
    keep = ours["attention_mask"].bool()
    assert (got[keep] - ref[keep]).abs().max().item() <= LOGITS_TOL
    assert torch.equal(back, got)


@pytest.mark.parametrize("source", ["clip-llama", "siglip-qwen2", "clip-mistral"])
def test_llava_hf_export_matches_transformers(
    source: str, clip_llava_dir: Path, qwen2_siglip_dir: Path, mistral_clip_dir: Path, tmp_path: Path
) -> None:
    path = {"clip-llama": clip_llava_dir, "siglip-qwen2": qwen2_siglip_dir, "clip-mistral": mistral_clip_dir}[source]
    model, processor = _loaded(path)
    export(model, tmp_path / "out")
    _assert_parity(model, processor, tmp_path / "out", PROMPTS, IMAGES)


def test_linear_connector_exports_as_an_exact_two_layer_projector(clip_llava_dir: Path, tmp_path: Path) -> None:
    """LLaVA-1's single Linear becomes llava's projector with the `linear` activation and an identity second layer."""
    config = vlbridge.load(clip_llava_dir)[0].config
    config = replace(config, connector=ConnectorConfig(name="linear"))
    model = _perturb(VisionLanguageModel(config, tokenizer=Tokenizer.from_dir(clip_llava_dir)).eval(), seed=4)
    export(model, tmp_path / "out")
    _assert_parity(model, model.processor, tmp_path / "out", PROMPTS, IMAGES)
    again, _ = vlbridge.load(tmp_path / "out")
    assert again.config.connector.hidden_act == "linear" and again.config.connector.depth == 2


def test_legacy_keys_are_transformers_4_names_and_load(clip_llava_dir: Path, tmp_path: Path) -> None:
    model, processor = _loaded(clip_llava_dir)
    export(model, tmp_path / "out", legacy_keys=True)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    legacy = LLAVA_LAYOUTS["legacy"]
    assert all(key.startswith(legacy) for key in keys)
    assert {prefix for prefix in legacy if any(key.startswith(prefix) for key in keys)} == set(legacy)
    _assert_parity(model, processor, tmp_path / "out", PROMPTS, IMAGES)


@pytest.mark.parametrize("legacy_keys", [False, True])
def test_anyres_model_exports_as_llava_next(legacy_keys: bool, llava_next_dir: Path, tmp_path: Path) -> None:
    """An AnyRes model becomes LlavaNextForConditionalGeneration + LlavaNextProcessor: same tiles, image_sizes,
    row-end vector and logits, for images of three aspect ratios in one batch."""
    model, processor = _loaded(llava_next_dir)
    export(model, tmp_path / "out", legacy_keys=legacy_keys)
    hf_model, hf_processor = _hf_llava(tmp_path / "out")
    assert type(hf_model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(hf_processor).__name__ == "LlavaNextProcessor"
    newline = hf_model.model.image_newline.detach()
    assert torch.equal(newline, model.image_newline.detach())
    prompts = ["USER: <image>\nwhat colour is the circle? ASSISTANT:", "USER: <image> and <image>? ASSISTANT: two"]
    images = [_image(2, (71, 40)), _image(3, (30, 90)), _image(4, (64, 64))]
    _assert_parity(model, processor, tmp_path / "out", prompts, images)


def test_embedded_default_exports_to_llava_hf(tmp_path: Path) -> None:
    """The shipped model (SigLIP-layout tower without CLS, chatml template) runs in transformers as in vlbridge."""
    model, processor = vlbridge.load()
    export(model, tmp_path / "out")
    messages = [{"role": "user", "content": "<image>\nWhat colour is the circle?"}]
    prompt = processor.apply_chat_template(messages)
    _, hf_processor = _hf_llava(tmp_path / "out")
    assert hf_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    sample = Image.open(default_model_dir() / "sample.png")
    _assert_parity(model, processor, tmp_path / "out", [prompt], [sample])
    hf_model, _ = _hf_llava(tmp_path / "out")
    inputs = processor(text=[prompt], images=[sample])
    ours = model.generate(**inputs, max_new_tokens=12)
    theirs = hf_model.generate(**inputs, max_new_tokens=12, do_sample=False)  # eos and pad from the config
    assert torch.equal(ours, theirs)


def test_bf16_export_stays_bf16(tmp_path: Path) -> None:
    model, processor = vlbridge.load(dtype="bf16")
    export(model, tmp_path / "out")
    hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert {p.dtype for p in hf_model.parameters()} == {torch.bfloat16}
    again, _ = vlbridge.load(tmp_path / "out", dtype="bf16")
    sample = Image.open(default_model_dir() / "sample.png")
    inputs = processor(text="<image>\nWhat colour is the circle?", images=[sample])
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("source", ["clip-llama", "siglip-qwen2"])
def test_hf_lm_export_matches_transformers_causal_lm(
    source: str, clip_llava_dir: Path, qwen2_siglip_dir: Path, tmp_path: Path
) -> None:
    path = clip_llava_dir if source == "clip-llama" else qwen2_siglip_dir
    model, processor = vlbridge.load(path, vision=False)
    _perturb(model)
    export(model, tmp_path / "lm", format="hf-lm")
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    assert type(hf_model).__name__ == ("Qwen2ForCausalLM" if source == "siglip-qwen2" else "LlamaForCausalLM")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "lm")
    prompt = "USER: describe the image ASSISTANT: a small yellow star"
    ours = processor(text=prompt, return_tensors="pt")
    assert ours["input_ids"][0].tolist() == tokenizer(prompt)["input_ids"]
    again, _ = vlbridge.load(tmp_path / "lm")
    with torch.no_grad():
        got = model(**ours).logits
        ref = hf_model.eval()(**ours).logits
        back = again(**ours).logits
    assert (got - ref).abs().max().item() <= LOGITS_TOL
    assert torch.equal(back, got)
