"""Processor: `<image>` expansion, batching and padding, and every typed error with its message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, processors

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ConfigError, ContextOverflowError, ModalityError, PlaceholderError, PromptError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import Processor
from vlbridge.vision.processor import ImageProcessor

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "what", "is", "this", "?", "a", "cat", "USER:", "ASSISTANT:"]
IMAGE_ID = len(WORDS)  # "<image>" is added right after the word vocabulary
SIDE, PATCH = 28, 14  # 2 x 2 patches: 4 visual tokens per image


def tokenizer(pad: str | None = "<pad>", eos: str | None = "</s>") -> Tokenizer:
    backend = BackendTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = Tokenizer(backend, bos_token="<s>", eos_token=eos, pad_token=pad, chat_template="{{ messages[0].content }}")
    tok.add_special_tokens(["<image>"])
    return tok


def tokens_per_image(height: int, width: int) -> int:
    return (height // PATCH) * (width // PATCH)


def processor(vision: bool = True, tok: Tokenizer | None = None, **kwargs) -> Processor:
    config = ImageProcessorConfig(size=SIDE, crop_size=SIDE)
    return Processor(
        tok or tokenizer(),
        ImageProcessor(config) if vision else None,
        image_token_id=IMAGE_ID,
        tokens_per_image=tokens_per_image,
        **kwargs,
    )


def image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def test_one_image_is_expanded_in_place() -> None:
    out = processor()("<image> what is this ?", images=[image()])
    assert out["input_ids"].tolist() == [[1, *[IMAGE_ID] * 4, 4, 5, 6, 7]]
    assert out["attention_mask"].tolist() == [[1] * 9]
    assert out["pixel_values"].shape == (1, 3, SIDE, SIDE) and out["pixel_values"].dtype == torch.float32


def test_two_images_from_paths_keep_prompt_order(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"{seed}.png")
        image(seed).save(paths[-1])
    proc = processor()
    out = proc("<image> a <image> cat", images=paths)
    assert out["input_ids"].tolist() == [[1, *[IMAGE_ID] * 4, 8, *[IMAGE_ID] * 4, 9]]
    expected = proc.image_processor([image(0), image(1)])
    assert torch.equal(out["pixel_values"], expected)


@pytest.mark.parametrize("nested", [False, True])
def test_batch_is_left_padded_and_images_follow_prompts(nested: bool) -> None:
    images = [[image(0)], [image(1), image(2)]] if nested else [image(0), image(1), image(2)]
    out = processor()(["<image> cat", "<image> <image> what is this ?"], images=images)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 13)
    assert ids[0].tolist() == [3] * 7 + [1, *[IMAGE_ID] * 4, 9]
    assert mask[0].tolist() == [0] * 7 + [1] * 6 and mask[1].all()
    assert out["pixel_values"].shape == (3, 3, SIDE, SIDE)
    assert torch.equal(out["pixel_values"][0], processor().image_processor([image(0)])[0])


def test_right_padding_and_pad_fallbacks() -> None:
    out = processor()(["cat", "what is this"], padding_side="right")
    assert out["input_ids"][0].tolist() == [1, 9, 3, 3] and out["attention_mask"][0].tolist() == [1, 1, 0, 0]
    assert "pixel_values" not in out
    assert processor(tok=tokenizer(pad=None))(["cat", "what is"])["input_ids"][0, 0] == 2  # eos
    assert processor(tok=tokenizer(pad=None, eos=None))(["cat", "what is"])["input_ids"][0, 0] == 0


def test_more_placeholders_than_images() -> None:
    with pytest.raises(PlaceholderError, match=r"hold 2 <image> placeholder\(s\) \(prompt 0: 2\) but 1 image\(s\)"):
        processor()("<image> <image> cat", images=[image()])


def test_fewer_placeholders_than_images_names_the_prompt() -> None:
    with pytest.raises(PlaceholderError, match=r"\(prompt 0: 1, prompt 1: 0\) but 2 image\(s\)"):
        processor()(["<image> cat", "cat"], images=[image(0), image(1)])
    with pytest.raises(PlaceholderError, match=r"prompt 1 holds 0 <image> placeholder\(s\) but 1 image\(s\)"):
        processor()(["<image> cat", "cat"], images=[[image(0)], [image(1)]])
    with pytest.raises(PlaceholderError, match=r"\(prompt 0: 1\) but 0 image\(s\)"):
        processor()("<image> cat")


def test_context_overflow_counts_text_and_visual_tokens() -> None:
    proc = processor(max_length=8)
    proc("<image> cat", images=[image()])  # 2 text + 4 visual fits
    pattern = r"prompt 0 needs 10 tokens \(2 text \+ 8 visual from 2 image\(s\)\) but the context holds 8; shorten"
    with pytest.raises(ContextOverflowError, match=pattern):
        proc("<image> <image> cat", images=[image(0), image(1)])


def test_text_only_refuses_images() -> None:
    with pytest.raises(ModalityError, match=r"text-only .* cannot take images"):
        processor(vision=False)("what is this", images=[image()])
    with pytest.raises(ModalityError, match="cannot take images"):
        processor(vision=False)(["a", "cat"], images=[[], [image()]])
    assert processor(vision=False)("what is this", images=[[]])["input_ids"].tolist() == [[1, 4, 5, 6]]


def test_text_only_refuses_or_strips_placeholders() -> None:
    with pytest.raises(ModalityError, match=r"prompt\(s\) \[1\] contain <image> .* text_only_images='strip'"):
        processor(vision=False)(["cat", "<image> cat"])
    out = processor(vision=False, text_only_images="strip")(["<image>\nwhat is this", "a <image> cat"])
    assert IMAGE_ID not in out["input_ids"]
    assert out["input_ids"].tolist() == [[1, 4, 5, 6], [3, 1, 8, 9]]


def test_image_token_must_match_the_tokenizer() -> None:
    with pytest.raises(ConfigError, match=r"maps the image token '<image>' to id 12, but the model expects 99"):
        Processor(
            tokenizer(), ImageProcessor(ImageProcessorConfig()), image_token_id=99, tokens_per_image=lambda h, w: 1
        )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"text_only_images": "drop"}, "choose one of refuse, strip"), ({"template": "vicuna"}, "unknown template")],
)
def test_bad_settings(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        processor(**kwargs)


def test_bad_call_options() -> None:
    with pytest.raises(ConfigError, match="padding_side"):
        processor()("cat", padding_side="middle")
    with pytest.raises(ConfigError, match="return_tensors"):
        processor()("cat", return_tensors="np")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("what \ud800 is", r"prompt 0 holds a lone surrogate '\\ud800' \(U\+D800\) at character 5 \(after 'what '\)"),
        (["cat", "<image> a\udcff"], r"prompt 1 holds .* \(U\+DCFF\) at character 9 \(after '<image> a'\); decode"),
        (None, "text is a NoneType; pass a str or a list of str"),
        (["cat", 3], "prompt 1 is a int, not a str"),
    ],
)
def test_prompts_that_are_not_unicode_text_are_refused(text: object, pattern: str) -> None:
    """Positions count in the text as given, before `<image>` is expanded or stripped."""
    with pytest.raises(PromptError, match=pattern):
        processor(vision=False, text_only_images="strip")(text)


def test_chat_template_builtin_or_tokenizer() -> None:
    messages = [{"role": "user", "content": "<image>\nwhat is this ?"}]
    assert processor(template="plain").apply_chat_template(messages) == "<image>"
    assert processor().apply_chat_template(messages) == "<image>\nwhat is this ?"


def test_decode_skips_image_and_pad_tokens() -> None:
    proc = processor()
    out = proc(["<image> cat", "what is this"], images=[image()])
    assert proc.batch_decode(out["input_ids"]) == ["cat", "what is this"]
    assert proc.decode(out["input_ids"][1], skip_special_tokens=False) == "<pad> <pad> <s> what is this"
    assert proc.decode(out["input_ids"][0], skip_special_tokens=False).startswith("<s> <image> <image>")


def test_save_pretrained_writes_tokenizer_and_preprocessor(tmp_path: Path) -> None:
    processor().save_pretrained(tmp_path / "v")
    names = {p.name for p in (tmp_path / "v").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"} <= names
    assert Tokenizer.from_dir(tmp_path / "v").token_to_id("<image>") == IMAGE_ID
    processor(vision=False).save_pretrained(tmp_path / "t")
    assert not (tmp_path / "t" / "preprocessor_config.json").exists()
    assert not list((tmp_path / "v").glob("*.safetensors"))
