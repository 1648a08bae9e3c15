"""Tokenizer: a thin wrapper over the `tokenizers` library that reads and writes HF tokenizer folders.

No transformers at run time. `from_dir` reads `tokenizer.json` (the whole pipeline: normalizer, pre-tokenizer, model,
post-processor, added tokens), `tokenizer_config.json` / `special_tokens_map.json` (special tokens, chat template)
and `chat_template.jinja` / `chat_template.json`, and mirrors how transformers 5 builds its tokenizer from them:

- BOS/EOS come from the `tokenizer.json` post-processor. transformers 5 drops `add_bos_token` / `add_eos_token`
  from `tokenizer_config.json` whenever `tokenizer.json` exists; passing them explicitly rebuilds the post-processor
  as `[bos] $A [eos]`, as its `update_post_processor` does.
- Named special tokens (bos, eos, unk, pad, extra ones) are registered as special added tokens.
- `LlamaTokenizer(Fast)` folders holding a SentencePiece-style BPE (byte fallback) get transformers 5's Llama
  pipeline: no normalizer, a Metaspace pre-tokenizer (prepend "first", or "always" when `legacy` is true).

Chat templates render in a sandboxed jinja2 environment with the globals and filters HF templates expect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, pre_tokenizers, processors

from vlbridge.atomic import atomic_path, write_text
from vlbridge.errors import CheckpointError, ConfigError, DataError, PromptError
from vlbridge.files import read_json_object

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"))
_CLEANUPS += ((" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _token_text(value: Any) -> str | None:
    """A special token given as a string or as an HF AddedToken dict (`{"content": ...}`)."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


_RESAVE = "re-save the tokenizer (transformers' save_pretrained or vlbridge's Tokenizer.save) or copy it again"


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, {} if the file is absent; a damaged file raises CheckpointError."""
    return read_json_object(path, fix=_RESAVE) if path.is_file() else {}


def check_text(text: object, what: str = "the text") -> None:
    """PromptError unless `text` is a str that is valid Unicode, naming the position of the first bad character.

    A lone surrogate (U+D800..U+DFFF) is no character: it is what undecodable bytes become under
    errors="surrogateescape" (how Python reads sys.argv and file names), or what a JSON "\\ud83d" escape leaves without
    its pair. No tokenizer can encode one, and replacing it would change the prompt silently. `what` names the text.
    """
    if not isinstance(text, str):
        raise PromptError(f"{what} is a {type(text).__name__}, not a str; pass the prompt as text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char, before = text[err.start], text[max(0, err.start - 20) : err.start]
        raise PromptError(
            f"{what} holds a lone surrogate {char!r} (U+{ord(char):04X}) at character {err.start} (after {before!r}); "
            "decode the source bytes as UTF-8 (a lone surrogate comes from bytes that are not UTF-8, or a JSON "
            "\\uXXXX escape without its pair), or remove the character"
        ) from None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """HF's `tojson`: plain json.dumps, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(Extension):
    """Accept HF's `{% generation %}...{% endgeneration %}` (assistant-mask markers) and render the body as is."""

    tags = {"generation"}  # noqa: RUF012  (jinja's Extension API)

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    """Compile a chat template the way transformers does (sandboxed, trim/lstrip blocks, loop controls)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ConfigError(
            f"the chat template does not parse (line {err.lineno}: {err.message}); fix or replace it"
        ) from err


def _llama_pipeline(tok: tokenizers.Tokenizer, add_prefix_space: bool, legacy: bool) -> None:
    """transformers 5's LlamaTokenizer pipeline: no normalizer, Metaspace pre-tokenizer, SentencePiece decoder."""
    scheme = ("always" if legacy else "first") if add_prefix_space else "never"
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)


class Tokenizer:
    """Text <-> ids with an HF `tokenizer.json` pipeline, special tokens and a chat template."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        bos_token: str | None,
        eos_token: str | None,
        pad_token: str | None,
        chat_template: str | dict[str, str] | None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        unk_token: str | None = None,
        extra_special_tokens: Sequence[str] = (),
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        """Wrap `tok` (taken over: its special tokens are registered and padding/truncation switched off).

        `add_bos_token` / `add_eos_token` left as None keep `tok`'s post-processor; either one set rebuilds it.
        """
        self._tok = tok
        self._tok.no_padding()
        self._tok.no_truncation()
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        named = [t for t in (bos_token, eos_token, unk_token, pad_token, *extra_special_tokens) if t is not None]
        known = {str(t.content) for t in self._tok.get_added_tokens_decoder().values()}
        self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in named if t not in known])
        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        """`[bos] $A [eos]` for single sequences (and `[bos] $A [eos] [bos] $B [eos]` for pairs), as HF builds it."""
        add_bos = add_bos and self.bos_token_id is not None
        add_eos = add_eos and self.eos_token_id is not None
        bos, eos = self.bos_token, self.eos_token
        single = f"{bos}:0 " * add_bos + "$A:0" + f" {eos}:0" * add_eos
        pair = single + f" {bos}:1" * add_bos + " $B:1" + f" {eos}:1" * add_eos
        special = [(bos, self.bos_token_id)] * add_bos + [(eos, self.eos_token_id)] * add_eos
        self._tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    @classmethod
    def from_dir(
        cls, path: str | Path, add_bos_token: bool | None = None, add_eos_token: bool | None = None
    ) -> Tokenizer:
        """Load an HF tokenizer folder (`tokenizer.json` required); explicit add_*_token override its post-processor."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(
                f"{file} is missing: vlbridge needs the fast-tokenizer file; save the tokenizer with transformers' "
                "save_pretrained (or vlbridge's Tokenizer.save) into this folder"
            )
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as err:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise CheckpointError(f"{file} is not a valid tokenizer file ({err}); {_RESAVE}") from err
        config = _read_json(path / "tokenizer_config.json")
        if "added_tokens_decoder" not in config:  # transformers reads the legacy map only then, and lets it win
            config.update(_read_json(path / "special_tokens_map.json"))
        if config.get("tokenizer_class") in _LLAMA_CLASSES and getattr(tok.model, "byte_fallback", False):
            prefix = config.get("add_prefix_space")
            _llama_pipeline(tok, True if prefix is None else bool(prefix), bool(config.get("legacy", False)))
        for added in (config.get("added_tokens_decoder") or {}).values():
            content = _token_text(added)
            if content is not None and tok.token_to_id(content) is None:
                special = bool(added.get("special", True)) if isinstance(added, Mapping) else True
                tok.add_tokens([AddedToken(content, special=special, normalized=not special)])
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra_tokens = [_token_text(t) for t in (extra.values() if isinstance(extra, Mapping) else extra)]
        return cls(
            tok,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            pad_token=_token_text(config.get("pad_token")),
            chat_template=cls._read_chat_template(path, config),
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            unk_token=_token_text(config.get("unk_token")),
            extra_special_tokens=[t for t in extra_tokens if t is not None],
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    @staticmethod
    def _read_chat_template(path: Path, config: Mapping[str, Any]) -> str | dict[str, str] | None:
        """chat_template.jinja, else chat_template.json, else tokenizer_config's entry (a string or named list)."""
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        template = _read_json(path / "chat_template.json").get("chat_template", config.get("chat_template"))
        if isinstance(template, list):
            return {item["name"]: item["template"] for item in template}
        return template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with special tokens, whatever BOS/EOS the post-processor adds. Text that is not a str
        or not valid Unicode raises PromptError (see `check_text`)."""
        try:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            check_text(text)
            raise

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` over many texts (unpadded); PromptError names the first text that cannot be encoded."""
        texts = list(texts)
        try:
            return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]
        except TypeError:
            for i, text in enumerate(texts):
                check_text(text, f"text {i}")
            raise

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list or 1-D tensor); special added tokens are dropped unless asked for."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and type(self._tok.model).__name__ != "BPE":
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def token_to_id(self, token: str) -> int | None:
        """The id of `token`, None if the vocabulary lacks it."""
        return self._tok.token_to_id(token)

    def add_special_tokens(self, tokens: list[str]) -> None:
        """Add tokens that are never split or normalised (e.g. `<image>` when a text LLM gets vision)."""
        self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (what the embedding table must cover)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def to_json(self) -> str:
        """The whole pipeline (vocabulary, merges, normaliser, added tokens) as tokenizer.json text: two tokenizers
        whose texts are equal turn every text into the same ids (a teacher and its student are checked with this)."""
        return self._tok.to_str()

    @property
    def special_tokens(self) -> dict[str, str]:
        """The named special tokens that are set, as the variables a chat template sees."""
        named = zip(_SPECIAL_NAMES, (self.bos_token, self.eos_token, self.unk_token, self.pad_token), strict=True)
        return {name: token for name, token in named if token is not None}

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the tokenizer's jinja chat template, as transformers' apply_chat_template does."""
        template = self.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            from vlbridge.lm.templates import available

            raise ConfigError(
                "this tokenizer has no chat template; choose a built-in template "
                f"(one of: {', '.join(available())}) with the model config's `template` key"
            )
        try:
            return _compile(template).render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.exceptions.TemplateError as err:
            raise DataError(f"the chat template rejected these messages: {err}") from err

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and chat_template.jinja (read by transformers and from_dir)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "tokenizer.json") as tmp:
            self._tok.save(str(tmp))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self.special_tokens,
        }
        template = self.chat_template
        if isinstance(template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in template.items()]
        elif template:
            write_text(path / "chat_template.jinja", template)
        write_text(path / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
