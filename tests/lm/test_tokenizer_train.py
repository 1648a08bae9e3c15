"""train_tokenizer: byte-level BPE with fixed special-token ids, BOS, the template's chat template, and a round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlbridge.errors import ConfigError, DataError
from vlbridge.lm import templates
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.lm.tokenizer_train import chat_template_jinja, template_markers, train_tokenizer

CORPUS = [
    "What colour is the circle?\nred",
    "How many objects are there?\n3",
    "A small red circle in the top left and a large blue square below it. The text says CAT.",
    "Is there a green triangle?\nno",
] * 5
TEXTS = ["", "What colour is the square?", "  two  spaces\n\nand newlines\n", "unseen: ü ß 東京 🙂", "CAT\tDOG"]
MESSAGES = [
    [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}],
    [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": " <image>\nColour? "},
        {"role": "assistant", "content": " red "},
        {"role": "user", "content": "And the <image> square?"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
    [],
]


def test_special_tokens_come_first_with_fixed_roles() -> None:
    tok = train_tokenizer(CORPUS, 300)
    ids = [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<|im_start|>", "<|im_end|>")]
    assert ids == list(range(7))
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "<|im_end|>", "<pad>")
    assert tok.vocab_size <= 300


@pytest.mark.parametrize(
    ("template", "eos", "markers"),
    [
        ("plain", "</s>", []),
        ("vicuna_v1", "</s>", []),
        ("chatml", "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
        ("llama3", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    ],
)
def test_eos_is_the_templates_end_of_turn(template: str, eos: str, markers: list[str]) -> None:
    assert template_markers(template) == markers
    tok = train_tokenizer(CORPUS, 300, template=template)
    assert tok.eos_token == eos and all(tok.token_to_id(m) is not None for m in markers)


def test_byte_level_round_trip_and_bos() -> None:
    tok = train_tokenizer(CORPUS, 300)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert len(tok.encode("What colour is the circle?", add_special_tokens=False)) < 20  # 26 bytes: merges were learnt
    assert train_tokenizer(CORPUS, 300, add_bos=False).encode("red") == tok.encode("red", add_special_tokens=False)


def test_special_tokens_are_never_split_and_skipped_on_decode() -> None:
    tok = train_tokenizer(CORPUS, 300)
    ids = tok.encode("x<|im_start|>user\n<image><image>y<|im_end|>", add_special_tokens=False)
    for token in ("<|im_start|>", "<image>", "<|im_end|>"):
        assert tok.token_to_id(token) in ids
    assert ids.count(tok.token_to_id("<image>")) == 2
    assert tok.decode(ids) == "xuser\ny"


def test_special_tokens_in_the_training_texts_teach_no_merges(tmp_path: Path) -> None:
    """Rendered conversations train the tokenizer: their role names become tokens, their markers' characters not."""
    rendered = [templates.render("chatml", messages) for messages in MESSAGES] * 50
    train_tokenizer(rendered, 300).save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    specials = {token["content"] for token in saved["added_tokens"]}
    assert {"<|im_start|>", "<|im_end|>", "<image>"} <= specials
    assert [t for t in saved["model"]["vocab"] if t not in specials and ("<" in t or "|" in t) and len(t) > 1] == []
    tok = Tokenizer.from_dir(tmp_path)
    assert len(tok.encode("<|im_start|>assistant\n", add_special_tokens=False)) == 3


def test_newlines_split_pieces_cleanly() -> None:
    """Text tokenises alike whole or cut after a newline: what piecewise label masking relies on."""
    tok = train_tokenizer(CORPUS, 300)
    for left, right in [("assistant\n\n", "red"), ("colour?\n", "\nno"), ("a\n", "  b"), ("x\n\n\n", "\ty")]:
        whole = tok.encode(left + right, add_special_tokens=False)
        assert whole == tok.encode(left, add_special_tokens=False) + tok.encode(right, add_special_tokens=False)


@pytest.mark.parametrize("template", templates.available())
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_like_the_built_in_template(template: str, add_generation_prompt: bool) -> None:
    tok = train_tokenizer(CORPUS, 300, template=template)
    assert tok.chat_template == chat_template_jinja(template)
    for messages in MESSAGES:
        expected = templates.render(template, messages, add_generation_prompt=add_generation_prompt)
        assert tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_chat_template_refuses_bad_role_order() -> None:
    tok = train_tokenizer(CORPUS, 300)
    bad = [{"role": "assistant", "content": "hi"}]
    with pytest.raises(DataError, match="alternate"):
        tok.apply_chat_template(bad)
    with pytest.raises(DataError, match="alternate"):
        templates.render("chatml", bad)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tok = train_tokenizer(CORPUS, 300, template="llama3")
    tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    for text in [*TEXTS, "<|start_header_id|>user<|end_header_id|>\n\n<image>hi<|eot_id|>"]:
        assert again.encode(text) == tok.encode(text)
        assert again.decode(tok.encode(text), skip_special_tokens=False) == tok.decode(tok.encode(text), False)
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id, again.unk_token_id) == (1, 7, 3, 0)
    assert again.vocab_size == tok.vocab_size
    assert again.apply_chat_template(MESSAGES[1]) == templates.render("llama3", MESSAGES[1])


def test_training_is_deterministic(tmp_path: Path) -> None:
    train_tokenizer(CORPUS, 300).save(tmp_path / "a")
    train_tokenizer(CORPUS, 300).save(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"vocab_size 200 is too small.*at least 263"):
        train_tokenizer(CORPUS, 200)
    with pytest.raises(ConfigError, match=r"special_tokens lacks <\|im_end\|>"):
        train_tokenizer(CORPUS, 300, special_tokens=("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>"))
    with pytest.raises(ConfigError, match="unknown template"):
        train_tokenizer(CORPUS, 300, template="alpaca")
    custom = train_tokenizer(CORPUS, 300, special_tokens=("<unk>", "<s>", "</s>", "<pad>"), template="vicuna_v1")
    assert custom.token_to_id("<image>") is None and custom.token_to_id("<pad>") == 3
