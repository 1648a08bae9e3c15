"""Training a byte-level BPE tokenizer for a from-scratch model, with its special tokens and chat template.

Byte-level BPE (Radford et al., "Language Models are Unsupervised Multitask Learners", 2019; Sennrich et al., 2016)
over the `tokenizers` library: every byte is in the base vocabulary, so no text is ever unknown. The pre-tokenizer
isolates each newline before GPT-2's byte-level split, so text splits at every newline whatever follows it; with
the built-in templates, whose pieces meet at special tokens, newlines or before a letter, tokenising a
conversation piece by piece then gives the same ids as tokenising it whole (what `data.collate` relies on for
exact label boundaries).

Choices, recorded in the saved files so transformers reads them alike:
- special tokens first, in order (ids 0, 1, ...): `<unk>`, `<s>` (BOS), `</s>`, `<pad>`, `<image>`, then the
  template's markers (e.g. `<|im_start|>`, `<|im_end|>`), all never split;
- EOS is the template's end-of-turn marker when it is a special token (`<|im_end|>` for chatml, `</s>` for
  vicuna_v1, `<|eot_id|>` for llama3), else `</s>`, so generation stops where a reply ends;
- BOS is added by the tokenizer's post-processor (`add_bos=True`), never by the chat template, as the built-in
  templates expect. transformers' `apply_chat_template(tokenize=True)` encodes without special tokens and so
  without BOS: render the text, then call the tokenizer, to get vlbridge's ids;
- the chat template is jinja generated from the built-in template's data, rendering exactly `templates.render`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

from vlbridge.errors import ConfigError
from vlbridge.lm import templates
from vlbridge.lm.tokenizer import Tokenizer

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
BASE_SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, templates.IMAGE_PLACEHOLDER)
_MARKER = re.compile(r"<\|[^<>|]+\|>")  # <|im_start|>, <|eot_id|>, ...
_BYTES = 256


def _literal(text: str) -> str:
    """`text` as a jinja string literal (JSON quoting is a valid jinja string)."""
    return json.dumps(text, ensure_ascii=False)


def _split(fmt: str, field: str) -> tuple[str, str]:
    before, after = fmt.split("{" + field + "}")
    return before, after


def template_markers(template: str) -> list[str]:
    """The `<|...|>` marker tokens a built-in template writes, in order of first use."""
    spec = templates.TEMPLATES.get(template)
    text = "".join([spec.system_format, spec.user_format, spec.assistant_header, spec.end_of_turn])
    return list(dict.fromkeys(_MARKER.findall(text + spec.turn_separator)))


def chat_template_jinja(template: str) -> str:
    """A jinja chat template (as HF tokenizers store) that renders exactly what `templates.render` renders."""
    spec = templates.TEMPLATES.get(template)
    trim = " | trim" if spec.trim else ""
    image = _literal(templates.IMAGE_PLACEHOLDER)
    order_error = _literal("turns must alternate user, assistant, ... after an optional leading system message")
    parts = [
        f"{{% set system = {_literal(spec.system)} %}}{{% set turns = messages %}}",
        "{% if messages and messages[0]['role'] == 'system' %}",
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}{% endif %}",
    ]
    if spec.system_format:
        before, after = _split(spec.system_format, "system")
        parts.append(f"{{% if system %}}{{{{ {_literal(before)} + (system{trim}) + {_literal(after)} }}}}{{% endif %}}")
    user_before, user_after = _split(spec.user_format, "content")
    if spec.images_only_user:
        user_content = f"{image} * (message['content'].count({image}))"
    else:
        user_content = f"(message['content']{trim})"
    assistant = [spec.assistant_header + spec.reply_prefix, spec.end_of_turn + spec.turn_separator]
    parts += [
        "{% for message in turns %}",
        "{% if message['role'] != ['user', 'assistant'][loop.index0 % 2] %}",
        f"{{{{ raise_exception({order_error}) }}}}{{% endif %}}",
        "{% if message['role'] == 'user' %}",
        f"{{{{ {_literal(user_before)} + {user_content} + {_literal(user_after)} }}}}",
        "{% else %}",
        f"{{{{ {_literal(assistant[0])} + (message['content']{trim}) + {_literal(assistant[1])} }}}}",
        "{% endif %}{% endfor %}",
        "{% if add_generation_prompt and turns and turns[-1]['role'] == 'user' %}",
        f"{{{{ {_literal(spec.assistant_header)} }}}}{{% endif %}}",
    ]
    return "".join(parts)


def _special_tokens(template: str, special_tokens: Sequence[str] | None) -> list[str]:
    """The special tokens to train with: the defaults, or the caller's (checked to hold what the pipeline needs)."""
    needed = [*BASE_SPECIAL_TOKENS[:4], *template_markers(template)]
    if special_tokens is None:
        return list(dict.fromkeys([*BASE_SPECIAL_TOKENS, *needed]))
    missing = [t for t in needed if t not in special_tokens]
    if missing:
        raise ConfigError(
            f"special_tokens lacks {', '.join(missing)}; with template {template!r} the tokenizer needs "
            f"{', '.join(needed)} (pass special_tokens=None for the defaults)"
        )
    return list(dict.fromkeys(special_tokens))


def check_vocab_size(vocab_size: int, template: str, special_tokens: Sequence[str] | None = None) -> None:
    """ConfigError unless `vocab_size` holds the 256 byte tokens and the special tokens `train_tokenizer` would add
    (checked by a training run before any work)."""
    specials = _special_tokens(template, special_tokens)
    if vocab_size < _BYTES + len(specials):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs {_BYTES} byte tokens plus {len(specials)} "
            f"special tokens; use at least {_BYTES + len(specials)}"
        )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] | None = None,
    template: str = "chatml",
    *,
    add_bos: bool = True,
    min_frequency: int = 2,
) -> Tokenizer:
    """A byte-level BPE Tokenizer trained on `texts`, with special tokens and the template's chat template.

    `special_tokens` None: `<unk> <s> </s> <pad> <image>` and the template's markers. `vocab_size` counts
    everything (256 byte tokens, special tokens, merges); save the result with `Tokenizer.save`. `texts` may hold
    special tokens (conversations rendered with the chat template, whose role names and system prompt are among
    the most frequent text a model reads): they are cut out first, as encoding cuts them out, so no merge is spent
    on their characters (left in, `<|` and `|>` become merges).
    """
    check_vocab_size(vocab_size, template, special_tokens)
    specials = _special_tokens(template, special_tokens)
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    marker = re.compile("|".join(re.escape(token) for token in specials))
    backend.train_from_iterator((piece for text in texts for piece in marker.split(text) if piece), trainer)
    if add_bos:
        bos_id = backend.token_to_id(BOS)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    end_of_turn = templates.TEMPLATES.get(template).end_of_turn
    return Tokenizer(
        backend,
        bos_token=BOS,
        eos_token=end_of_turn if end_of_turn in specials else EOS,
        pad_token=PAD,
        chat_template=chat_template_jinja(template),
        unk_token=UNK,
        extra_special_tokens=[t for t in specials if t not in (UNK, BOS, EOS, PAD)],
    )
