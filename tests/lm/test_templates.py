"""Built-in conversation templates: exact strings per template (LLaVA's formats) and assistant-only supervision."""

from __future__ import annotations

import itertools

import pytest

from vlbridge.errors import ConfigError, DataError
from vlbridge.lm import templates
from vlbridge.lm.templates import available, render, render_segments

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
CHAT = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "Colour?"},
]
EXPECTED = {
    "plain": "<image>A cat.\n",  # user text is dropped, only its placeholders stay
    "qa": "<image>\nWhat is it?\nA cat.\nColour?\n",
    "vicuna_v1": f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:",
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
    "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n",
    "chatml_no_system": "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
    "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nColour?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


def test_available_names() -> None:
    assert available() == ["plain", "qa", "vicuna_v1", "chatml", "chatml_no_system", "llama3"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_rendering(name: str) -> None:
    assert render(name, CHAT) == EXPECTED[name]


def test_plain_is_image_then_caption() -> None:
    caption = [{"from": "human", "value": "Describe the image briefly.\n<image>"}, {"from": "gpt", "value": "A cat."}]
    assert render("plain", caption, add_generation_prompt=False) == "<image>A cat.\n"
    assert render_segments("plain", caption) == [("<image>", False), ("A cat.\n", True)]


def test_system_message_replaces_default_and_generation_prompt_is_optional() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render("vicuna_v1", messages) == "Be brief. USER: Hi ASSISTANT:"
    assert render("vicuna_v1", messages, add_generation_prompt=False) == "Be brief. USER: Hi "
    assert render("chatml", messages).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
    assert render("chatml_no_system", messages) == render("chatml", messages)


def test_llama3_trims_messages() -> None:
    out = render("llama3", [{"role": "user", "content": "  Hi \n"}], add_generation_prompt=False)
    assert out.endswith("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_llava_from_value_format_equals_role_content() -> None:
    llava = [{"from": "human", "value": m["content"]} if m["role"] == "user" else {"from": "gpt", "value": m["content"]}
             for m in CHAT]  # fmt: skip
    for name in available():
        assert render(name, llava) == render(name, CHAT)


@pytest.mark.parametrize("name", ["plain", "qa", "vicuna_v1", "chatml", "llama3"])
def test_segments_concatenate_to_render_and_supervise_only_assistant_replies(name: str) -> None:
    second = {"role": "user", "content": "<image>\nAnd this one?"}
    two_turns = [*CHAT[:2], second, {"role": "assistant", "content": "Black."}]
    segments = render_segments(name, two_turns)
    assert "".join(text for text, _ in segments) == render(name, two_turns, add_generation_prompt=False)
    supervised = [text for text, flag in segments if flag]
    end = templates.TEMPLATES.get(name).end_of_turn
    assert [s.strip() for s in supervised] == [f"A cat.{end}".strip(), f"Black.{end}".strip()]
    assert all(a[1] != b[1] for a, b in itertools.pairwise(segments))  # neighbours merged
    for text, flag in segments:
        if not flag:
            assert "A cat." not in text and "Black." not in text


def test_vicuna_supervises_reply_and_eos() -> None:
    segments = render_segments("vicuna_v1", CHAT[:2])
    assert segments == [(f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:", False), (" A cat.</s>", True)]


def test_unknown_template_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown template 'vicuna'.*chatml.*llama3.*plain.*vicuna_v1"):
        render("vicuna", CHAT)


@pytest.mark.parametrize(
    ("messages", "pattern"),
    [
        ([{"role": "assistant", "content": "x"}], r"turn 0 is from 'assistant' but 'user'"),
        ([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], r"turn 1 is from 'user'"),
        ([{"role": "robot", "content": "x"}], r"role 'robot'; use 'system', 'user' or 'assistant'"),
        ([{"role": "user", "content": ["x"]}], r"needs text content as a string"),
    ],
)
def test_malformed_conversations_raise_data_error(messages: list, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        render("chatml", messages)
