"""The OpenAI-compatible HTTP server: FastAPI routes over one `Engine`.

POST /v1/chat/completions (streamed as server-sent events or not), GET /v1/models, GET /health, GET /metrics and the
chat page at /. Request handling reads, checks and tokenizes (images and videos decoded in a worker thread); only the
engine thread runs the model. Every failure is answered in OpenAI's error shape and never reaches the engine or the
server. FastAPI is imported here only, so `vlbridge` itself never needs it (the `serve` extra).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from vlbridge.errors import ModalityError, VlbridgeError
from vlbridge.serve.auth import OPEN, APIKey, KeyStore
from vlbridge.serve.engine import Engine, EngineRequest, Event, QueueFullError, RequestTimeoutError
from vlbridge.serve.limits import Limits, open_image
from vlbridge.serve.schemas import APIError, ChatRequest, parse_chat_request
from vlbridge.serve.videos import video_inputs

ACCESS_LOG = logging.getLogger("vlbridge.serve.access")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServerState:
    """What the routes share: the engine, the deployment's settings, and counters for /metrics."""

    engine: Engine
    model_name: str
    limits: Limits = field(default_factory=Limits)
    keys: KeyStore | None = None
    allowed_media_path: Path | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.time)

    @property
    def takes_images(self) -> bool:
        """Whether the vision plug-in is loaded (a --text-only deployment has none)."""
        return self.engine.model.has_vision


def _error(err: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _as_api_error(err: Exception) -> APIError:
    """The HTTP error for an exception from checking, preprocessing or running a request."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, QueueFullError):
        return APIError(503, f"the server is busy: {err}; retry shortly", code="queue_full")
    if isinstance(err, RequestTimeoutError):
        return APIError(504, f"{err}; ask for fewer tokens, or retry when the server is less busy", code="timeout")
    if isinstance(err, ModalityError):
        return APIError(403, str(err), code="modality")
    if isinstance(err, VlbridgeError):
        return APIError(400, str(err))
    return APIError(500, f"internal error ({type(err).__name__}); the request was dropped, the server goes on")


def _check_permission(state: ServerState, key: APIKey, request: ChatRequest) -> None:
    for modality, urls, limit in (
        ("image", request.image_urls, state.limits.max_images),
        ("video", request.video_urls, state.limits.max_videos),
    ):
        if not urls:
            continue
        if not state.takes_images:
            raise APIError(
                403, "this deployment is text-only (no vision weights loaded): send text only", code="modality"
            )
        if modality not in key.modalities:
            raise APIError(
                403,
                f"API key {key.name!r} may not send {modality}s (its modalities: {sorted(key.modalities)})",
                code="modality",
            )
        if len(urls) > limit:
            raise APIError(
                400, f"{len(urls)} {modality}s sent; this server takes at most {limit} per request", "messages", "limit"
            )


def _prepare(state: ServerState, chat: ChatRequest) -> EngineRequest:
    """Decode the images, render the chat template, tokenize and size the request (runs in a worker thread)."""
    model, limits = state.engine.model, state.limits
    processor = model.processor
    assert processor is not None
    images = [
        open_image(url, limits, model.config.image_processor, state.allowed_media_path, i)
        for i, url in enumerate(chat.image_urls)
    ]
    prompt = processor.apply_chat_template(chat.messages, add_generation_prompt=True)
    if chat.video_urls:
        inputs = video_inputs(processor, prompt, chat, limits, state.allowed_media_path)
    else:
        inputs = processor(text=prompt, images=images or None, return_tensors="pt")
    prompt_tokens, context = inputs["input_ids"].shape[1], state.engine.max_length
    room = context - prompt_tokens
    max_tokens = chat.max_tokens if chat.max_tokens is not None else min(limits.default_max_tokens, room)
    if max_tokens > room or room < 1:
        raise APIError(
            400,
            f"the prompt takes {prompt_tokens} tokens (visual tokens included) and max_tokens is {max_tokens}: "
            f"{prompt_tokens} + {max_tokens} = {prompt_tokens + max_tokens} > the context of {context} tokens; "
            f"ask for at most {max(room, 0)} tokens or shorten the prompt",
            "max_tokens",
            "context_length_exceeded",
        )
    stop = tuple(model.generation_config().stop_strings) + chat.stop
    config = model.generation_config(
        max_new_tokens=max_tokens,
        do_sample=chat.temperature > 0,
        temperature=chat.temperature or 1.0,
        top_p=chat.top_p,
        seed=chat.seed,
        stop_strings=stop,
    )
    return EngineRequest(
        inputs["input_ids"],
        inputs.get("pixel_values"),
        config,
        emit=lambda event: None,
        timeout_s=limits.timeout_s,
        video_frames=inputs.get("video_frames"),
        image_sizes=inputs.get("image_sizes"),
    )


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None) -> str:
    body = {
        **base,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def _usage(event: Event) -> dict[str, int]:
    total = event.prompt_tokens + event.completion_tokens
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens, "total_tokens": total}


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application over `state`; the engine is started by the caller and stopped at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has stopped accepting and waited for open requests (SIGTERM's drain); the engine ends last
        await run_in_threadpool(state.engine.stop)

    app = FastAPI(title="vlbridge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.vlbridge = state

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        request.state.key_name = "-"
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > state.limits.max_body_bytes):
            response: Response = _error(
                APIError(
                    413,
                    f"the request body is over the server's limit of {state.limits.max_body_bytes:,} bytes",
                    code="limit",
                )
            )
        else:
            try:
                response = await call_next(request)
            except Exception as err:  # a handler bug answers 500 and leaves the server up
                response = _error(_as_api_error(err))
        state.statuses[response.status_code] += 1
        ACCESS_LOG.info(
            "%s %s %s %d %.3fs key=%s",
            request.client.host if request.client else "-",
            request.method,
            request.url.path,
            response.status_code,
            time.perf_counter() - started,
            request.state.key_name,
        )
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def authenticate(request: Request) -> APIKey:
        key = OPEN if state.keys is None else state.keys.authenticate(request.headers.get("authorization"))
        request.state.key_name = key.name
        return key

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            authenticate(request)
        except APIError as err:
            return _error(err)
        card = {
            "id": state.model_name,
            "object": "model",
            "created": int(state.started),
            "owned_by": "vlbridge",
            "modalities": ["text", "image", "video"] if state.takes_images else ["text"],
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        engine = state.engine
        rate = engine.tokens_generated / engine.busy_seconds if engine.busy_seconds else 0.0
        lines = [f'vlbridge_requests_total{{status="{code}"}} {n}' for code, n in sorted(state.statuses.items())]
        lines += [
            f"vlbridge_queue_length {engine.queue_length}",
            f"vlbridge_running_requests {engine.running}",
            f"vlbridge_generated_tokens_total {engine.tokens_generated}",
            f"vlbridge_tokens_per_second {rate:.2f}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            key = authenticate(request)
            try:
                body = json.loads(await _read_body(request, state.limits.max_body_bytes))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise APIError(400, f"the request body is not valid JSON: {err}") from err
            chat = parse_chat_request(body, state.engine.model.config.image_token)
            _check_permission(state, key, chat)
            engine_request = await run_in_threadpool(_prepare, state, chat)
            events: asyncio.Queue[Event] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            engine_request.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
            state.engine.submit(engine_request)
        except Exception as err:
            return _error(_as_api_error(err))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_name}
        if chat.stream:
            return StreamingResponse(_stream(base, chat, engine_request, events), media_type="text/event-stream")
        try:
            return await _complete(base, engine_request, events)
        finally:
            engine_request.cancelled.set()

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, read no further than `limit` bytes (a chunked upload has no Content-Length to check)."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise APIError(413, f"the request body is over the server's limit of {limit:,} bytes", code="limit")
    return bytes(body)


async def _complete(base: dict[str, Any], request: EngineRequest, events: asyncio.Queue[Event]) -> Response:
    """Collect the reply and answer it as one chat.completion."""
    text = []
    while True:
        event = await events.get()
        if event.error is not None:
            return _error(_as_api_error(event.error))
        text.append(event.text)
        if event.last:
            break
    message = {"role": "assistant", "content": "".join(text)}
    choice = {"index": 0, "message": message, "finish_reason": event.finish_reason}
    return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": _usage(event)})


async def _stream(
    base: dict[str, Any], chat: ChatRequest, request: EngineRequest, events: asyncio.Queue[Event]
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, one chunk per text piece, the finish chunk, usage if asked, [DONE]. A client
    that goes away cancels this generator, and the `finally` frees its cache row at the engine's next step."""
    try:
        yield _chunk(base, {"role": "assistant", "content": ""}, None)
        while True:
            event = await events.get()
            if event.error is not None:
                yield f"data: {json.dumps(_as_api_error(event.error).body())}\n\n"
                break
            if event.text:
                yield _chunk(base, {"content": event.text}, None)
            if event.last:
                yield _chunk(base, {}, event.finish_reason)
                if chat.include_usage:
                    usage = {**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(event)}
                    yield f"data: {json.dumps(usage)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        request.cancelled.set()
