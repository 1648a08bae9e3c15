"""The Generator: greedy and sampled decoding with a KV cache, stop strings, streaming and batches.

It drives any `StepModel` (the text-only `DecoderLM`, or the vision-language model) through `prefill` then one
`decode_step` per token, and knows nothing of images or tokenization: it works on ids, and turns them into text
only through the optional `detokenize` callable, for stop strings.

Semantics follow transformers' `generate` so that greedy decoding matches it token for token: logits are processed
in HF's order (repetition penalty as in Keskar et al., "CTRL", 2019; then, when sampling, temperature, top-k, and
nucleus/top-p filtering from Holtzman et al., "The Curious Case of Neural Text Degeneration", 2020), a row that
emits an EOS id is finished and padded with `pad_token_id` afterwards, and generation stops when every row is
finished or `max_new_tokens` were produced. Batches are left-padded; the attention mask keeps rows independent.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from vlbridge.config import unknown_keys
from vlbridge.errors import ConfigError, PromptError
from vlbridge.lm.kv_cache import KVCache

_NO_BEAMS = "beam search is not implemented: decoding is greedy, or sampling with do_sample=True"
_HF_ONLY = {
    "max_length": "use max_new_tokens, which counts the new tokens only; max_length counts the prompt too",
    "min_length": "no minimum is implemented; eos_token_id=() generates exactly max_new_tokens",
    "min_new_tokens": "no minimum is implemented; eos_token_id=() generates exactly max_new_tokens",
    "num_beams": _NO_BEAMS,
    "num_beam_groups": _NO_BEAMS,
    "early_stopping": _NO_BEAMS,
    "length_penalty": _NO_BEAMS,
    "diversity_penalty": _NO_BEAMS,
}
"""transformers' `generate` settings vlbridge does not have, with what to do instead."""


def _check_type(name: str, value: Any, kind: type) -> None:
    """ConfigError unless `value` is an instance of `kind` (numbers.Integral, numbers.Real or bool); a bool counts
    only as a bool, although Python makes it an int."""
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return
    wanted = {bool: "True or False", numbers.Integral: "an int", numbers.Real: "a number"}[kind]
    raise ConfigError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")


def _is_id(value: Any) -> bool:
    """Whether `value` can be a token id: an int >= 0 (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _as_tuple(value: Any) -> Any:
    """One id or string as a tuple of one, a list as a tuple, None as (); anything else as is, for the check."""
    if value is None:
        return ()
    if isinstance(value, (str, numbers.Integral)):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick new tokens and when to stop; every field is type- and range-checked when the config is built."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    repetition_penalty: float = 1.0  # 1.0: none; > 1 discourages tokens already in the prompt or the output
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None  # sampling seed; None: torch's global generator
    suppress_tokens: tuple[int, ...] = ()  # ids never generated (a VLM's visual placeholder), as HF's setting

    def __post_init__(self) -> None:
        _check_type("max_new_tokens", self.max_new_tokens, numbers.Integral)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check_type("do_sample", self.do_sample, bool)
        _check_type("temperature", self.temperature, numbers.Real)
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(
                f"temperature must be finite and >= 0 (1 leaves the logits as they are), got {self.temperature}"
            )
        if self.do_sample and self.temperature == 0:
            raise ConfigError(f"temperature must be > 0 when sampling, got {self.temperature}; use do_sample=False")
        _check_type("top_k", self.top_k, numbers.Integral)
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        _check_type("top_p", self.top_p, numbers.Real)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        _check_type("repetition_penalty", self.repetition_penalty, numbers.Real)
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ConfigError(
                f"repetition_penalty must be finite and > 0 (1 disables it), got {self.repetition_penalty}"
            )
        eos = self.eos_token_id
        if not isinstance(eos, tuple) or not all(_is_id(i) for i in eos):
            raise ConfigError(f"eos_token_id must be a tuple of ids (ints >= 0; () for none), got {eos!r}")
        suppress = self.suppress_tokens
        if not isinstance(suppress, tuple) or not all(_is_id(i) for i in suppress):
            raise ConfigError(f"suppress_tokens must be a tuple of ids (ints >= 0; () for none), got {suppress!r}")
        _check_type("pad_token_id", self.pad_token_id, numbers.Integral)
        if self.pad_token_id < 0:
            raise ConfigError(
                f"pad_token_id must be >= 0 (the id finished rows are padded with), got {self.pad_token_id}"
            )
        stops = self.stop_strings
        if not isinstance(stops, tuple) or not all(isinstance(s, str) for s in stops):
            raise ConfigError(f"stop_strings must be a tuple of strings (() for none), got {stops!r}")
        if "" in stops:
            raise ConfigError(
                f"stop_strings {stops!r} hold an empty stop string, which every text contains, so each reply would end "
                "after one token; remove it"
            )
        if self.seed is not None:
            _check_type("seed", self.seed, numbers.Integral)
            if not 0 <= self.seed < 2**64:
                raise ConfigError(f"seed must be in [0, 2**64) (what torch.Generator takes), got {self.seed}")

    def with_overrides(self, **overrides: Any) -> GenerationConfig:
        """This config with `overrides` laid over it, as `generate(**settings)` takes them: one EOS id or stop string
        may stand for a tuple of one, a list for a tuple, None for (); a name that is no field raises ConfigError
        naming the accepted ones (and what to use instead of a transformers-only setting such as max_length)."""
        unknown = unknown_keys(GenerationConfig, overrides)
        if unknown:
            named = ", ".join(f"{name} ({_HF_ONLY[name]})" if name in _HF_ONLY else name for name in unknown)
            accepted = ", ".join(sorted(f.name for f in fields(GenerationConfig)))
            raise ConfigError(f"unknown generation setting(s): {named}; accepted: {accepted}")
        for name in ("eos_token_id", "stop_strings", "suppress_tokens"):
            if name in overrides:
                overrides[name] = _as_tuple(overrides[name])
        return replace(self, **overrides)

    def check_vocabulary(self, vocab_size: int) -> None:
        """ConfigError if an EOS or pad id is no id of a vocabulary of `vocab_size`: an EOS id the model can never
        emit would never end a reply, and a pad id outside it could not be decoded."""
        outside = sorted({i for i in (*self.eos_token_id, self.pad_token_id, *self.suppress_tokens) if i >= vocab_size})
        if outside:
            raise ConfigError(
                f"token id(s) {outside} (eos_token_id {list(self.eos_token_id)}, pad_token_id {self.pad_token_id}, "
                f"suppress_tokens {list(self.suppress_tokens)}) lie outside the model's vocabulary of {vocab_size}; "
                f"pass ids below {vocab_size}"
            )


class StepModel(Protocol):
    """What the Generator needs of a model: a cache, a prompt pass and a one-token pass, each returning (B, V)."""

    def new_cache(self, batch_size: int, max_length: int) -> KVCache: ...

    def prefill(self, cache: KVCache, attention_mask: Tensor, **inputs: Any) -> Tensor: ...

    def decode_step(self, cache: KVCache, token_ids: Tensor, attention_mask: Tensor) -> Tensor: ...


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Divide positive logits (B, V) of seen tokens by `penalty`, multiply negative ones; `seen` is bool (B, V)."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (ties with the k-th kept), -inf elsewhere."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one), -inf elsewhere."""
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_tokens(logits: Tensor, seen: Tensor | None, config: GenerationConfig, rng: torch.Generator | None) -> Tensor:
    """Process logits (B, V) in HF's order and pick one token per row (B,); `seen` is the repetition penalty's bool
    (B, V) of tokens so far (None: no penalty), `rng` the sampler's generator (None: torch's global one)."""
    if config.suppress_tokens:
        ids = torch.tensor(config.suppress_tokens, device=logits.device)
        logits = logits.index_fill(-1, ids, float("-inf"))
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if not config.do_sample:
        return logits.argmax(dim=-1)
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k:
        logits = filter_top_k(logits, config.top_k)
    if config.top_p < 1.0:
        logits = filter_top_p(logits, config.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=rng)[:, 0]


def _check_prompts(attention_mask: Tensor, prompt_ids: Tensor) -> None:
    """PromptError unless the prompts are a batch (B, T) of at least one row, each holding at least one token: the
    first new token is read from the logits of a prompt's last token, and a row without one would be continued from
    padding, silently."""
    if attention_mask.ndim != 2 or prompt_ids.ndim != 2 or attention_mask.shape[0] != prompt_ids.shape[0]:
        raise PromptError(
            f"prompts must come as a batch: input_ids and attention_mask of shape (batch, length) with one row per "
            f"prompt, got {tuple(prompt_ids.shape)} and {tuple(attention_mask.shape)}; add a batch dimension with "
            "ids[None]"
        )
    if attention_mask.shape[0] == 0:
        raise PromptError("no prompts were given; pass at least one")
    empty = (attention_mask == 0).all(dim=1).nonzero()[:, 0].tolist()
    if empty:
        raise PromptError(
            f"prompt row(s) {empty} have no tokens: generation continues from a prompt's last token; give non-empty "
            "text (empty text encodes to no tokens unless the tokenizer adds a BOS)"
        )


class Generator:
    """Autoregressive decoding over a StepModel; `detokenize(ids) -> str` is needed only for stop strings.

    A stop string ends a row once the text of its generated ids contains it; the token that completed the stop
    string stays in the output (callers trim the text if they want it gone).
    """

    def __init__(self, model: StepModel, detokenize: Callable[[list[int]], str] | None = None) -> None:
        self.model = model
        self.detokenize = detokenize

    def generate(self, attention_mask: Tensor, config: GenerationConfig, prompt_ids: Tensor, **inputs: Any) -> Tensor:
        """(B, T + new): prompt_ids followed by the new tokens, finished rows padded with `pad_token_id`.

        inputs go to the model's prefill (default: input_ids=prompt_ids); attention_mask (B, T_seq) covers the
        sequence the model caches (1 = token, 0 = left padding).
        """
        steps = list(self.stream(attention_mask, config, prompt_ids, **inputs))
        return torch.cat([prompt_ids, torch.stack(steps, dim=1).to(prompt_ids.dtype)], dim=1)

    def stream(
        self, attention_mask: Tensor, config: GenerationConfig, prompt_ids: Tensor, **inputs: Any
    ) -> Iterator[Tensor]:
        """Yield the new tokens (B,) of each step as soon as they are chosen (finished rows get `pad_token_id`)."""
        if config.stop_strings and self.detokenize is None:
            raise ConfigError("stop_strings need a detokenize callable: Generator(model, detokenize=tokenizer.decode)")
        _check_prompts(attention_mask, prompt_ids)
        return self._run(attention_mask, config, prompt_ids, inputs or {"input_ids": prompt_ids})

    def _run(
        self, attention_mask: Tensor, config: GenerationConfig, prompt_ids: Tensor, inputs: dict[str, Any]
    ) -> Iterator[Tensor]:
        """The decode loop; model work runs under inference_mode, which is not held while the caller has a token."""
        b, t = attention_mask.shape
        device = attention_mask.device
        with torch.inference_mode():
            cache = self.model.new_cache(b, t + config.max_new_tokens)
            mask = torch.ones(b, t + config.max_new_tokens, dtype=attention_mask.dtype, device=device)
            mask[:, :t] = attention_mask
            logits = self.model.prefill(cache, attention_mask, **inputs)  # (B, V)
            assert cache.length == t, "prefill must cache exactly the attention_mask's tokens"
            config.check_vocabulary(logits.shape[-1])
            seen = self._seen_tokens(prompt_ids, attention_mask, logits, config)
            eos = torch.tensor(config.eos_token_id, dtype=torch.long, device=device)
            unfinished = torch.ones(b, dtype=torch.bool, device=device)
        rng = None
        if config.do_sample and config.seed is not None:
            rng = torch.Generator(device=logits.device).manual_seed(config.seed)
        generated: list[list[int]] = [[] for _ in range(b)]
        for step in range(config.max_new_tokens):
            with torch.inference_mode():
                tokens = choose_tokens(logits, seen, config, rng)  # (B,)
                tokens = torch.where(unfinished, tokens, config.pad_token_id)
                if seen is not None:
                    seen.scatter_(1, tokens[:, None], True)
                if eos.numel():
                    unfinished &= ~torch.isin(tokens, eos)
                if config.stop_strings:
                    self._check_stop_strings(tokens, unfinished, generated, config.stop_strings)
            yield tokens
            if step + 1 == config.max_new_tokens or not bool(unfinished.any()):
                return
            with torch.inference_mode():
                logits = self.model.decode_step(cache, tokens[:, None], mask[:, : t + step + 1])

    @staticmethod
    def _seen_tokens(
        prompt_ids: Tensor, attention_mask: Tensor, logits: Tensor, config: GenerationConfig
    ) -> Tensor | None:
        """Bool (B, V) of the prompt's token ids, for the repetition penalty (None when it is off).

        Padding positions do not count when prompt_ids line up with attention_mask, so a left-padded row is penalised
        exactly as the same prompt alone (HF would also penalise the pad id).
        """
        if config.repetition_penalty == 1.0:
            return None
        ids = prompt_ids.to(logits.device, torch.long)
        real = torch.ones_like(ids)
        if prompt_ids.shape == attention_mask.shape:
            real = attention_mask.to(logits.device, torch.long)
        counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device).scatter_add_(1, ids, real)
        return counts > 0

    def _check_stop_strings(
        self, tokens: Tensor, unfinished: Tensor, generated: list[list[int]], stop_strings: tuple[str, ...]
    ) -> None:
        """Append this step's tokens per unfinished row and finish rows whose generated text contains a stop string."""
        assert self.detokenize is not None
        for row, (token, live) in enumerate(zip(tokens.tolist(), unfinished.tolist(), strict=True)):
            if not live:
                continue
            generated[row].append(token)
            text = self.detokenize(generated[row])
            if any(s in text for s in stop_strings):
                unfinished[row] = False
