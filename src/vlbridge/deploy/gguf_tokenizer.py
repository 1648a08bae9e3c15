"""The tokenizer a llama.cpp GGUF file describes (`tokenizer.ggml.*` metadata), rebuilt as a `tokenizers` pipeline.

Two vocabularies are read, as transformers' GGUF loader reads them (we match its tokenization, since both start
from the same file): `gpt2`, a byte-level BPE with the file's merges (SmolLM, Llama 3, Qwen2), split by the regex the
`tokenizer.ggml.pre` name stands for (GPT-2's own when the name is not one of ours); and `llama`, a SentencePiece
BPE with byte fallback (Llama 2, TinyLlama, Mistral), its merges the file's or, when it has none, the ones its
vocabulary and scores imply. Tokens the file marks as control become special tokens, user-defined ones added tokens.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from vlbridge.errors import CheckpointError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
"""`tokenizer.ggml.pre` -> the regex its merges were learned under; any other name gets GPT-2's byte-level split."""


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (the alphabet byte-level BPE vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelling[byte] = chr(byte)
        else:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return spelling


def _implied_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece vocabulary implies: every split of a token into two tokens, ranked by the merged
    token's score (best first), then longer left and right pieces first, then file order (transformers' rule)."""
    ranked = []
    for token, index in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[index], -len(left), -len(right), index, left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def _merges(meta: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The file's merges as pairs, or None when it has none."""
    merges = meta.get("tokenizer.ggml.merges")
    return None if merges is None else [tuple(m.split(" ", 1)) for m in merges]  # type: ignore[misc]


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a GGUF file's metadata (`tokenizer.ggml.*`); an unsupported kind raises."""
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise CheckpointError("the GGUF file has no tokenizer.ggml.tokens; convert a file written with its tokenizer")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "gpt2":
        alphabet = _byte_alphabet()
        letters = set(alphabet.values())
        spell = {t: t if set(t) <= letters else "".join(alphabet[b] for b in t.encode()) for t in tokens}
        vocab = {spell[t]: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(meta) or [], fuse_unk=False))
        split = SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
        tok.pre_tokenizer = (
            byte_level
            if split is None
            else pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])
        )
        tok.decoder = decoders.ByteLevel()
        special_ok = letters
    elif kind == "llama":
        vocab = {t: i for i, t in enumerate(tokens)}
        merges = _merges(meta) or _implied_merges(vocab, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        unk_id = meta.get("tokenizer.ggml.unknown_token_id")
        unk = tokens[unk_id] if unk_id is not None else None
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        special_ok = None
    else:
        raise CheckpointError(
            f"the GGUF tokenizer kind {kind!r} is not supported; vlbridge converts 'gpt2' (byte-level BPE) and "
            "'llama' (SentencePiece BPE) vocabularies"
        )
    control = [
        t for t, k in zip(tokens, types, strict=True) if k == CONTROL and (special_ok is None or set(t) <= special_ok)
    ]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == USER_DEFINED
        ]
    )
    return tok
