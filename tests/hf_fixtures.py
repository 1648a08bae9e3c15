"""Tiny random-weight HF checkpoints written with transformers' own save_pretrained, so real loading code runs.

transformers is a test-time oracle only. Nothing is downloaded: tokenizers are trained here on a few sentences.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "a red circle is left of a blue square",
    "how many objects are there? there are three objects",
    "what colour is the triangle? the triangle is green",
    "USER: describe the image ASSISTANT: a small yellow star above a large purple diamond",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} {% else %}"
    "ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def make_tokenizer(vocab_size: int = 200, image_token: bool = True):
    """A byte-level BPE tokenizer wrapped as transformers' fast tokenizer, with <image> added unless told not to
    (a text LLM's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    if image_token:
        hf.add_special_tokens({"additional_special_tokens": ["<image>"]})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_llava(
    path: Path, family: str = "clip", tie: bool = False, seed: int = 0, text: str = "llama", strategy: str | None = None
) -> Path:
    """Write a random tiny llava-hf checkpoint with tokenizer and processor files to `path`; `text` names the LM's
    family (llama, mistral or qwen2)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        MistralConfig,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision_kwargs = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    )
    if family == "clip":
        vision = CLIPVisionConfig(**vision_kwargs)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        extra_tokens = 1
    else:
        vision = SiglipVisionConfig(**vision_kwargs)
        image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
        extra_tokens = 0
    text_config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[text]
    text_config = text_config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_index=image_token_id,
        vision_feature_select_strategy=strategy or ("default" if family == "clip" else "full"),
        tie_word_embeddings=tie,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=extra_tokens,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
"""LLaVA-NeXT's default grids (336 x {1,2,3} px) scaled to the tiny 32 px tiles."""


def tiny_llava_next(path: Path, module_keys: bool = False, seed: int = 2) -> Path:
    """Write a random tiny llava_next-hf checkpoint (CLIP tower, 32 px tiles) with tokenizer and processor files.

    save_pretrained writes the weights under the original names (`language_model.model.*`, `image_newline`);
    `module_keys` rewrites them under the module names transformers >= 4.52 uses (`model.language_model.*`,
    `model.image_newline`, `lm_head.*`), the layout other writers of that era produce."""
    from safetensors.torch import save_file
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    if module_keys:
        weights = {key: value.contiguous() for key, value in model.state_dict().items()}
        assert "model.image_newline" in weights and "lm_head.weight" in weights
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


TINY_VISION = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4}
TINY_VISION.update(image_size=32, patch_size=8)
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
TINY_TEXT.update(
    num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2
)
TOWER_KINDS = ("clip_vision", "clip", "siglip_vision", "siglip")
"""CLIPVisionModel, CLIPModel, SiglipVisionModel, SiglipModel: the checkpoints a vision tower may come from."""
LM_FAMILIES = ("llama", "mistral", "qwen2")


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), so a skipped or swapped weight shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.3 * torch.randn_like(param))
    return model.eval()


def tiny_tower(kind: str, path: Path) -> torch.nn.Module:
    """A tiny random tower of `kind` (TOWER_KINDS) saved with its image processor; returns the HF vision model (the
    vision half of a CLIPModel / SiglipModel) to compare to."""
    import transformers as tf

    torch.manual_seed(0)
    text = {**TINY_TEXT, "vocab_size": 99}
    if kind == "clip_vision":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY_VISION))
    elif kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(vision_config=TINY_VISION, text_config=text))
    elif kind == "siglip_vision":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY_VISION))
    else:
        model = tf.SiglipModel(tf.SiglipConfig(vision_config=TINY_VISION, text_config=text))
    randomise(model).save_pretrained(path)
    if kind.startswith("clip"):
        processor = tf.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    else:
        processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6])
    processor.save_pretrained(path)
    return getattr(model, "vision_model", model)


def tiny_lm(family: str, path: Path, tie: bool = False) -> torch.nn.Module:
    """A tiny random HF causal LM of `family` (LM_FAMILIES) saved with a tokenizer that lacks <image>, and a chat
    template, as a text LLM's folder is."""
    import transformers as tf

    torch.manual_seed(1)
    tokenizer = make_tokenizer(image_token=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    config_class = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
    model = randomise(
        tf.AutoModelForCausalLM.from_config(
            config_class(vocab_size=len(tokenizer), tie_word_embeddings=tie, **TINY_TEXT)
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def random_image(seed: int, size: tuple[int, int]):
    """A PIL RGB image of uniform random pixels, `size` as (width, height)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def assert_greedy_matches(hf_model, hf_proc, model, proc, prompts: list[str], images: list) -> None:
    """20 greedy tokens of vlbridge equal transformers' on the same left-padded batch (EOS ignored by both)."""
    inputs = proc(text=prompts, images=images, return_tensors="pt")
    hf_inputs = hf_proc(text=prompts, images=images, return_tensors="pt", padding=True)
    ref = hf_model.generate(
        **hf_inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    got = model.generate(**inputs, max_new_tokens=20, eos_token_id=())
    assert got.shape == ref.shape == (len(prompts), inputs["input_ids"].shape[1] + 20)
    assert torch.equal(got, ref)
