"""The serving engine: one thread owns the model and runs every request in one continuously batched decode loop.

Orca's iteration-level scheduling (Yu et al., OSDI 2022): between two decode steps, waiting requests are prefilled
(each alone, so its prompt runs exactly as it would by itself) into free rows of a preallocated KV cache and join the
batch; requests that finished, were cancelled (their client went away) or ran out of time leave at once and their
rows are reused. Only this thread touches the model, so the HTTP side never runs a forward pass concurrently; it
submits requests and receives `Event`s through a callback.

The engine batches connectors that splice visual tokens into the prompt (mlp, pool, perceiver, qformer, ...): after
prefill their requests are plain text decoding. An image request to a connector that keeps per-request decode state
(gated_xattn's cross-attention hooks, LLaVA-Mini's pre-fusion cache) decodes alone instead, outside the batch: with
a KV cache of its own and the model's `VisionStep` (the path `model.generate` takes), one token per engine iteration,
interleaved with the batch's decode steps. It still streams, stops, times out and is cancelled like a batched request,
and takes one of the `max_batch` places.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vlbridge.connectors.base import FusionCache
from vlbridge.errors import ConfigError, ContextOverflowError
from vlbridge.lm.kv_cache import KVCache
from vlbridge.model.generate import GenerationConfig, choose_tokens
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.model.vlm_generation import VisionStep
from vlbridge.serve.slots import SlotCache
from vlbridge.serve.textstream import TextStream


class QueueFullError(Exception):
    """The engine's waiting queue is at its limit; the client should retry later (HTTP 503 with Retry-After)."""


class RequestTimeoutError(Exception):
    """A request ran past its time limit and was stopped (HTTP 504); its row went to the next request."""


@dataclass(frozen=True)
class Event:
    """What the engine reports about a request: a piece of text, or the end (finish_reason, or error) with usage."""

    text: str = ""
    finish_reason: str | None = None  # "stop" or "length" on the last event
    error: Exception | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def last(self) -> bool:
        """Whether this event ends the request."""
        return self.finish_reason is not None or self.error is not None


@dataclass
class EngineRequest:
    """One tokenized request: ids (1, T) with visual tokens expanded, its images' pixels (with each image's (height,
    width) in `image_sizes` for an AnyRes model) or its videos' frames (with each video's frame count in
    `video_frames`), how to generate."""

    input_ids: Tensor
    pixel_values: Tensor | None
    config: GenerationConfig
    emit: Callable[[Event], None]
    timeout_s: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    video_frames: Tensor | None = None
    image_sizes: Tensor | None = None


@dataclass
class _Alone:
    """What a request decoding outside the batch holds: the model's step with the request's decode state, its cache."""

    step: VisionStep
    cache: KVCache


@dataclass
class _Running:
    """A running request: its cache length, last token, reply text and sampler, and `alone` unless it holds a row."""

    request: EngineRequest
    length: int
    stream: TextStream
    deadline: float
    rng: torch.Generator | None
    alone: _Alone | None = None
    token: int = 0
    generated: int = 0


class Engine:
    """Continuous batching over `max_batch` cache rows of `max_length` tokens; `submit` from any thread."""

    def __init__(
        self, model: VisionLanguageModel, max_batch: int = 16, max_length: int | None = None, max_queue: int = 256
    ) -> None:
        if model.processor is None:
            raise ConfigError("the serving engine needs a model with its tokenizer (vlbridge.load gives one)")
        self.model = model
        self.max_length = max_length or model.config.language_model.max_position_embeddings
        self.max_queue = max_queue
        self.cache = SlotCache(model.language_model, max_batch, self.max_length)
        self._waiting: deque[EngineRequest] = deque()
        self._running: list[_Running] = []  # request i holds cache row i
        self._alone: list[_Running] = []  # requests decoding outside the batch
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="vlbridge-engine", daemon=True)
        self.tokens_generated = 0
        self.busy_seconds = 0.0

    def start(self) -> Engine:
        """Start the engine thread; returns self."""
        self._thread.start()
        return self

    def submit(self, request: EngineRequest) -> None:
        """Queue `request`; QueueFullError when `max_queue` requests already wait."""
        prompt, new = request.input_ids.shape[1], request.config.max_new_tokens
        if prompt + new > self.max_length:
            raise ContextOverflowError(
                f"the prompt takes {prompt} tokens and max_tokens asks {new} more: {prompt} + {new} = {prompt + new} "
                f"> the served context of {self.max_length}"
            )
        with self._wake:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (the queue limit)")
            self._waiting.append(request)
            self._wake.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the waiting and running requests, then end the thread (a drain, as on SIGTERM)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queue_length(self) -> int:
        """Requests waiting for a cache row."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests decoding now: those holding a cache row and those decoding alone."""
        return len(self._running) + len(self._alone)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self.running and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._waiting and not self.running:
                    return
                joining = []
                while self._waiting and self.running + len(joining) < self.cache.slots:
                    joining.append(self._waiting.popleft())
            started = time.perf_counter()
            for request in joining:
                self._admit(request)
            if self._running:
                self._decode()
            if self._alone:
                for r in self._alone:
                    self._decode_alone(r)
                self._leave()
            self.busy_seconds += time.perf_counter() - started

    def _admit(self, request: EngineRequest) -> None:
        """Prefill `request` alone into the next free row (or its own cache) and take its first token; errors go to its
        client only."""
        if request.cancelled.is_set():
            return
        joined: list[_Running] | None = None
        try:
            with torch.inference_mode():
                logits, alone = self._prefill(request, len(self._running))
            config = request.config
            rng = None
            if config.do_sample and config.seed is not None:
                rng = torch.Generator(device=logits.device).manual_seed(config.seed)
            detokenize = self.model.processor.decode  # type: ignore[union-attr]
            running = _Running(
                request,
                length=request.input_ids.shape[1],
                stream=TextStream(detokenize, config.stop_strings),
                deadline=time.monotonic() + (request.timeout_s or float("inf")),
                rng=rng,
                alone=alone,
            )
            joined = self._running if alone is None else self._alone
            joined.append(running)
            self._take(running, self._choose(logits, [running])[0])
        except Exception as err:  # a bad request ends with its own error; the engine goes on
            if joined is not None:
                joined.pop()
            request.emit(Event(error=err))
        self._leave()

    def _prefill(self, request: EngineRequest, slot: int) -> tuple[Tensor, _Alone | None]:
        """Run the prompt into cache row `slot`, or into a cache of its own when the connector left decode state for
        this request (it then decodes alone, `_decode_alone`); its last logits (1, V), and what decoding alone needs."""
        model, device = self.model, self.model.device
        lm = model.language_model
        ids = request.input_ids.to(device)
        mask = torch.ones_like(ids)
        pixels = None if request.pixel_values is None else request.pixel_values.to(device)
        length = ids.shape[1] + request.config.max_new_tokens  # what generate's cache holds for this request
        fusion = FusionCache(max_length=length)
        frames = None if request.video_frames is None else request.video_frames.to(device)
        sizes = None if request.image_sizes is None else request.image_sizes.to(device)
        embeds, hooks = model.embed(ids, pixels, mask, fusion, image_sizes=sizes, video_frames=frames)
        if not hooks and fusion.state is None:
            return lm.prefill(self.cache.row(slot), mask, inputs_embeds=embeds), None
        cache = lm.new_cache(1, length)
        logits = lm.prefill(cache, mask, inputs_embeds=embeds, hooks=hooks)
        return logits, _Alone(VisionStep(model, hooks, fusion), cache)

    def _decode(self) -> None:
        """One decode step for every running request; a failure ends those requests, not the engine."""
        running = self._running
        try:
            with torch.inference_mode():
                device = self.model.device
                positions = torch.tensor([r.length for r in running], device=device)  # (n,)
                tokens = torch.tensor([[r.token] for r in running], device=device)  # (n, 1)
                width = int(positions.max()) + 1
                mask = (torch.arange(width, device=device)[None, :] <= positions[:, None]).long()  # (n, S)
                logits = self.model.language_model.decode_step(self.cache.step(positions), tokens, mask)  # (n, V)
            chosen = self._choose(logits, running)
        except Exception as err:
            for r in running:
                r.request.emit(Event(error=err))
            running.clear()
            return
        for r, token in zip(running, chosen, strict=True):
            r.length += 1
            self._take(r, token)
        self._leave()

    def _decode_alone(self, r: _Running) -> None:
        """One decode step of a request decoding alone, through its own cache and decode state; a failure ends it."""
        assert r.alone is not None
        try:
            with torch.inference_mode():
                device = self.model.device
                tokens = torch.tensor([[r.token]], device=device)  # (1, 1)
                mask = torch.ones(1, r.length + 1, dtype=torch.long, device=device)  # the cached tokens and this one
                logits = r.alone.step.decode_step(r.alone.cache, tokens, mask)  # (1, V)
            token = self._choose(logits, [r])[0]
        except Exception as err:
            r.request.emit(Event(error=err))
            r.request.cancelled.set()
            return
        r.length += 1
        self._take(r, token)

    @staticmethod
    def _choose(logits: Tensor, running: list[_Running]) -> list[int]:
        """Each row's next token: the batch's argmax for greedy rows where it is no suppressed token, the request's
        own chooser (sampler, suppressed tokens) for the others."""
        greedy = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(running):
            config = r.request.config
            if config.do_sample or greedy[i] in config.suppress_tokens:
                greedy[i] = int(choose_tokens(logits[i : i + 1], None, config, r.rng)[0])
        return greedy

    def _take(self, r: _Running, token: int) -> None:
        """Record `token` for `r`, send the text it completes, and finish `r` when it is done."""
        r.token = token
        r.generated += 1
        self.tokens_generated += 1
        config = r.request.config
        finish = None
        if token in config.eos_token_id:
            finish = "stop"
        else:
            piece = r.stream.push(token)
            if piece:
                r.request.emit(Event(text=piece))
            if r.stream.stopped:
                finish = "stop"
            elif r.generated >= config.max_new_tokens:
                finish = "length"
        if finish is None and time.monotonic() > r.deadline:
            limit = f"its time limit of {r.request.timeout_s:g} s"
            r.request.emit(Event(error=RequestTimeoutError(f"the request ran past {limit} after {r.generated} tokens")))
            r.request.cancelled.set()
        elif finish is not None:
            rest = r.stream.flush()
            if rest:
                r.request.emit(Event(text=rest))
            usage = {"prompt_tokens": r.request.input_ids.shape[1], "completion_tokens": r.generated}
            r.request.emit(Event(finish_reason=finish, **usage))
            r.request.cancelled.set()  # marks the row free for _leave

    def _leave(self) -> None:
        """Drop finished or cancelled requests: free their rows, moving the last running rows into the gaps."""
        self._alone = [r for r in self._alone if not r.request.cancelled.is_set()]
        running = self._running
        for i in reversed(range(len(running))):
            if not running[i].request.cancelled.is_set():
                continue
            last = len(running) - 1
            if i != last:
                self.cache.move(last, i, running[last].length)
                running[i] = running[last]
            running.pop()
