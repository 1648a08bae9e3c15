"""Built-in conversation templates (LLaVA's conversation formats) as data, and their rendering.

Liu et al., "Visual Instruction Tuning" (2023) and LLaVA-NeXT define the prompt formats a LLaVA model is trained
and queried with: `plain` (pre-training: the image then its caption, no roles), `vicuna_v1` (LLaVA-1.5),
`chatml` (Qwen-style `<|im_start|>role ... <|im_end|>`; `chatml_no_system` without its default system prompt) and
`llama3` (Llama-3 header tokens). Each is a `Template` record; one renderer turns messages into the prompt string,
and `render_segments` tells the training pipeline which pieces are supervised: only assistant replies and their
end-of-turn marker.

Built-in templates never write the BOS token: the tokenizer's post-processor adds it when the model uses one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vlbridge.errors import DataError
from vlbridge.registry import Registry

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
"""The placeholder LLaVA's data format uses for an image inside a user message."""

_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Template:
    """A conversation format: the text written around each turn, and which of it is supervised."""

    name: str
    system: str = ""  # default system prompt; a leading "system" message replaces it
    system_format: str = ""  # how a non-empty system prompt is written ("" = the format has no system slot)
    user_format: str = "{content}"  # a whole user turn
    assistant_header: str = ""  # before each assistant reply; also the generation prompt
    reply_prefix: str = ""  # supervised text between the header and the reply (vicuna's space)
    end_of_turn: str = ""  # supervised marker that closes an assistant reply
    turn_separator: str = ""  # unsupervised text after the end-of-turn marker
    trim: bool = False  # strip surrounding whitespace from every message (Llama-3 does)
    images_only_user: bool = False  # user turns keep only their image/video placeholders (LLaVA `plain`)
    stop: str = ""  # text that ends a generated reply where the end-of-turn marker is plain text, not the EOS token


TEMPLATES: Registry[Template] = Registry("template")

TEMPLATES.register("plain")(Template(name="plain", end_of_turn="\n", images_only_user=True, stop="\n"))

# Role-free question and answer lines. A from-scratch model needs no chat header, and a reply costs about 12 tokens
# instead of chatml's 20.
TEMPLATES.register("qa")(Template(name="qa", user_format="{content}\n", end_of_turn="\n", stop="\n"))

TEMPLATES.register("vicuna_v1")(
    Template(
        name="vicuna_v1",
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_header="ASSISTANT:",
        reply_prefix=" ",
        end_of_turn="</s>",
    )
)

CHATML = Template(
    name="chatml",
    system="You are a helpful assistant.",
    system_format="<|im_start|>system\n{system}<|im_end|>\n",
    user_format="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    turn_separator="\n",
)
TEMPLATES.register("chatml")(CHATML)

# chatml with no default system prompt (a system message still fills the slot). Qwen2's default system turn is about
# 31 tokens of a small from-scratch tokenizer on every sample, some 15% of the default recipe's instruction tokens.
TEMPLATES.register("chatml_no_system")(replace(CHATML, name="chatml_no_system", system=""))

TEMPLATES.register("llama3")(
    Template(
        name="llama3",
        system="You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language.",
        system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        trim=True,
    )
)


def available() -> list[str]:
    """Registered template names."""
    return TEMPLATES.names()


def normalize_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """`{"role", "content"}` messages from either that form or LLaVA's `{"from": "human"|"gpt", "value"}`."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"message {i} must be a mapping with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if role not in _LLAVA_ROLES:
            raise DataError(
                f"message {i} has role {role!r}; use 'system', 'user' or 'assistant' (LLaVA's 'human'/'gpt' also work)"
            )
        if not isinstance(content, str):
            raise DataError(f"message {i} ({role}) needs text content as a string, got {type(content).__name__}")
        out.append({"role": _LLAVA_ROLES[role], "content": content})
    return out


def _turns(messages: Sequence[Mapping[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    """Split off a leading system message and check that user and assistant turns alternate, user first."""
    turns = normalize_messages(messages)
    system = None
    if turns and turns[0]["role"] == "system":
        system = turns.pop(0)["content"]
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise DataError(
                f"turn {i} is from {turn['role']!r} but {expected!r} was expected: after an optional leading system "
                "message, turns must alternate user, assistant, user, ..."
            )
    return system, turns


def _segments(template: Template, messages: Sequence[Mapping[str, str]]) -> list[tuple[str, bool]]:
    """Raw (text, supervised) pieces in order, possibly empty or with equal neighbours."""
    system, turns = _turns(messages)
    system = template.system if system is None else system
    pieces: list[tuple[str, bool]] = []
    if template.system_format and system:
        pieces.append((template.system_format.format(system=system.strip() if template.trim else system), False))
    for turn in turns:
        content = turn["content"].strip() if template.trim else turn["content"]
        if turn["role"] == "user":
            if template.images_only_user:
                content = "".join(marker * content.count(marker) for marker in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER))
            pieces.append((template.user_format.format(content=content), False))
        else:
            pieces.append((template.assistant_header, False))
            pieces.append((template.reply_prefix + content + template.end_of_turn, True))
            pieces.append((template.turn_separator, False))
    return pieces


def render_segments(template_name: str, messages: Sequence[Mapping[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text piece, supervised?) in order; only assistant replies are supervised.

    The pieces concatenate to `render(template_name, messages, add_generation_prompt=False)`; neighbouring pieces
    with the same flag are merged so the training pipeline tokenises as few boundaries as possible.
    """
    merged: list[tuple[str, bool]] = []
    for text, supervised in _segments(TEMPLATES.get(template_name), messages):
        if not text:
            continue
        if merged and merged[-1][1] == supervised:
            merged[-1] = (merged[-1][0] + text, supervised)
        else:
            merged.append((text, supervised))
    return merged


def render(template_name: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt string; with `add_generation_prompt`, a conversation ending on a user turn gets the reply header."""
    template = TEMPLATES.get(template_name)
    text = "".join(piece for piece, _ in _segments(template, messages))
    _, turns = _turns(messages)
    if add_generation_prompt and turns and turns[-1]["role"] == "user":
        text += template.assistant_header
    return text
