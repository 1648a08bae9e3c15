"""The serving engine: one thread owns the model and runs every request in one continuously batched decode loop.

Orca's iteration-level scheduling (Yu et al., OSDI 2022): between two decode steps, waiting requests are prefilled
(each alone, so its prompt runs exactly as it would by itself) into free rows of a preallocated KV cache and join the
batch; requests that finished, were cancelled (their client went away) or ran out of time leave at once and their
rows are reused. Only this thread touches the model, so the HTTP side never runs a forward pass concurrently; it
submits requests and receives `Event`s through a callback.

The engine batches connectors that splice visual tokens into the prompt (mlp, pool, perceiver, qformer, ...): after
prefill their requests are plain text decoding. Connectors that keep per-request decode state (gated_xattn's
cross-attention hooks, LLaVA-Mini's pre-fusion cache) are refused with a clear error rather than served wrongly.
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
from vlbridge.model.generate import GenerationConfig, Generator
from vlbridge.model.vlm import VisionLanguageModel
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
    """One tokenized request: ids (1, T) with visual tokens expanded, its images' pixels, how to generate."""

    input_ids: Tensor
    pixel_values: Tensor | None
    config: GenerationConfig
    emit: Callable[[Event], None]
    timeout_s: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Running:
    """A request holding a cache row: its cache length, last token, reply text and sampler."""

    request: EngineRequest
    length: int
    stream: TextStream
    deadline: float
    rng: torch.Generator | None
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
        self._running: list[_Running] = []
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
        """Requests holding a cache row now."""
        return len(self._running)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._running and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._waiting and not self._running:
                    return
                joining = []
                while self._waiting and len(self._running) + len(joining) < self.cache.slots:
                    joining.append(self._waiting.popleft())
            started = time.perf_counter()
            for request in joining:
                self._admit(request)
            if self._running:
                self._decode()
            self.busy_seconds += time.perf_counter() - started

    def _admit(self, request: EngineRequest) -> None:
        """Prefill `request` alone into the next free row and take its first token; errors go to its client only."""
        if request.cancelled.is_set():
            return
        slot = len(self._running)
        try:
            with torch.inference_mode():
                logits = self._prefill(request, slot)
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
            )
            self._running.append(running)
            self._take(running, self._choose(logits, [running])[0])
        except Exception as err:  # a bad request ends with its own error; the engine goes on
            if len(self._running) > slot:
                self._running.pop()
            request.emit(Event(error=err))
        self._leave()

    def _prefill(self, request: EngineRequest, slot: int) -> Tensor:
        """Run the prompt into cache row `slot`; its last logits (1, V)."""
        model, device = self.model, self.model.device
        ids = request.input_ids.to(device)
        mask = torch.ones_like(ids)
        pixels = None if request.pixel_values is None else request.pixel_values.to(device)
        fusion = FusionCache(max_length=self.max_length)
        embeds, hooks = model.embed(ids, pixels, mask, fusion)
        if hooks or fusion.state is not None:
            raise ConfigError(
                f"connector {model.config.connector.name!r} keeps per-request decode state, which the batching "
                "engine does not serve; use `vlbridge chat` or model.generate for this model"
            )
        return model.language_model.prefill(self.cache.row(slot), mask, inputs_embeds=embeds)

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

    @staticmethod
    def _choose(logits: Tensor, running: list[_Running]) -> list[int]:
        """Each row's next token: argmax for greedy rows, the request's own sampler for the others."""
        greedy = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(running):
            if r.request.config.do_sample:
                greedy[i] = int(Generator._choose(logits[i : i + 1], None, r.request.config, r.rng)[0])
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
        """Free the rows of finished or cancelled requests, moving the last running rows into the gaps."""
        running = self._running
        for i in reversed(range(len(running))):
            if not running[i].request.cancelled.is_set():
                continue
            last = len(running) - 1
            if i != last:
                self.cache.move(last, i, running[last].length)
                running[i] = running[last]
            running.pop()
