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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from vlbridge.errors import ConfigError
from vlbridge.lm.kv_cache import KVCache


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick new tokens and when to stop."""

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

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 when sampling, got {self.temperature}; use do_sample=False")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")


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
            seen = self._seen_tokens(prompt_ids, attention_mask, logits, config)
            eos = torch.tensor(config.eos_token_id, dtype=torch.long, device=device)
            unfinished = torch.ones(b, dtype=torch.bool, device=device)
        rng = None
        if config.do_sample and config.seed is not None:
            rng = torch.Generator(device=logits.device).manual_seed(config.seed)
        generated: list[list[int]] = [[] for _ in range(b)]
        for step in range(config.max_new_tokens):
            with torch.inference_mode():
                tokens = self._choose(logits, seen, config, rng)  # (B,)
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

    @staticmethod
    def _choose(logits: Tensor, seen: Tensor | None, config: GenerationConfig, rng: torch.Generator | None) -> Tensor:
        """Process logits (B, V) in HF's order and pick one token per row (B,)."""
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
