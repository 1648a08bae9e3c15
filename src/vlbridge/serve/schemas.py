"""The chat completions request as OpenAI's API defines it, read into a typed `ChatRequest`, and OpenAI's error
shape.

Each message's `content` is a string or a list of parts (`text`, `image_url`, `video_url`); image parts become
`<image>` placeholders in the text at their place, and their URLs are kept in order, so any number of images per
message works and placeholders always match images. OpenAI defines no video part; `{"type": "video_url",
"video_url": {"url": ...}}` is the shape vLLM and other OpenAI-compatible servers accept, and video parts become
`<video>` placeholders alike, sampled at the request's `video_fps` up to `video_max_frames` (extra body fields; the
server's defaults otherwise). A request holds images or videos, not both. Fields the server cannot honour (`n > 1`,
tools) are refused with a message saying so, rather than ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vlbridge.errors import VlbridgeError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_busy",
    504: "timeout_error",
}
IGNORED = {"model", "user", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "response_format"}
"""Fields accepted and not acted on, as OpenAI-compatible servers do (logprobs and penalties are refused if set)."""


class APIError(VlbridgeError):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse."""
        kind = ERROR_TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """What a chat completion asks for: messages as text with `<image>` (`<video>`) placeholders, image (video) URLs
    in their order, and how videos are sampled (None: the server's default)."""

    messages: list[dict[str, str]]
    image_urls: list[str]
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    video_urls: tuple[str, ...] = ()
    video_fps: float | None = None
    video_max_frames: int | None = None


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"{name} must be a number, got {value!r}", name)
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low:g} and {high:g}, got {value}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise APIError(400, f"{name} must be an integer >= {low}, got {value!r}", name)
    return value


def _content(message: dict[str, Any], i: int, tokens: dict[str, str], urls: dict[str, list[str]]) -> str:
    """A message's content as text, each image (video) part replaced by a placeholder line, `tokens[kind]`, and its
    URL appended to `urls[kind]`, kind being "image_url" or "video_url"."""
    content = message.get("content")
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{param} must be a string or a list of content parts", param)
    pieces = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind in urls:
            media = part.get(kind)
            url = media.get("url") if isinstance(media, dict) else media
            if not isinstance(url, str):
                raise APIError(400, f"{param}[{j}].{kind}.url must be a string", f"{param}[{j}].{kind}")
            urls[kind].append(url)
            pieces.append(tokens[kind] + "\n")
        else:
            raise APIError(
                400,
                f"{param}[{j}] must be {{'type': 'text', 'text': ...}}, {{'type': 'image_url', ...}} or "
                "{'type': 'video_url', ...}",
                param,
            )
    return "".join(pieces)


def parse_chat_request(body: Any, image_token: str, video_token: str = "<video>") -> ChatRequest:
    """Read and check a chat completions body; APIError 400 naming the field on anything wrong."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if body.get("n", 1) != 1:
        raise APIError(400, f"n={body.get('n')!r} is not supported: this server returns one choice per request", "n")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise APIError(400, f"{name} are not supported: this server has no tool calling", name)
    if body.get("logprobs"):
        raise APIError(400, "logprobs are not supported", "logprobs")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "messages")
    urls: dict[str, list[str]] = {"image_url": [], "video_url": []}
    tokens = {"image_url": image_token, "video_url": video_token}
    rendered = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role must be 'system', 'user' or 'assistant'", f"messages[{i}].role")
        rendered.append({"role": message["role"], "content": _content(message, i, tokens, urls)})
    if urls["image_url"] and urls["video_url"]:
        raise APIError(
            400, "a request holds images or videos, not both: send the video and the images apart", "messages"
        )
    max_tokens = _integer(body, "max_completion_tokens", 1)
    max_tokens = max_tokens if max_tokens is not None else _integer(body, "max_tokens", 1)
    stop = body.get("stop")
    stop = (stop,) if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise APIError(400, "stop must be a string or a list of up to 4 strings", "stop")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", "stream_options")
    return ChatRequest(
        messages=rendered,
        image_urls=urls["image_url"],
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 1e-9, 1.0, 1.0),
        stop=tuple(s for s in (stop or ()) if s),
        seed=_integer(body, "seed", 0),
        stream=bool(body.get("stream", False)),
        include_usage=bool(options.get("include_usage", False)),
        video_urls=tuple(urls["video_url"]),
        video_fps=None if body.get("video_fps") is None else _number(body, "video_fps", 1e-3, 60.0, 1.0),
        video_max_frames=_integer(body, "video_max_frames", 1),
    )
