"""Video URLs of a chat request turned into the model's inputs, within the server's limits.

A `video_url` part (the shape vLLM accepts: OpenAI defines none) names a base64 data URL (`data:video/mp4;base64,...`)
or, when the operator allowed a media folder, a file:// URL inside it, by the same rules as images (serve/limits.py).
A data URL's size is checked before it is decoded, and its bytes go to a temporary file that lives only while the
processor decodes it with PyAV, as `vlbridge chat --video` does: frames sampled at the request's `video_fps` up to
`video_max_frames` (the server's defaults otherwise; never above its `max_video_frames`, so memory stays bounded).
A video PyAV cannot read is a 400 with the decoder's reason, naming the video by its place in the request.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from vlbridge.errors import VideoError
from vlbridge.model.processor import Processor
from vlbridge.serve.limits import Limits, allowed_file, data_url_bytes, unsupported_url
from vlbridge.serve.schemas import APIError, ChatRequest

VIDEO_DATA_URL_TYPES = ("video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/avi")


def sampling(chat: ChatRequest, limits: Limits) -> tuple[float, int]:
    """(fps, max_frames) for the request's videos; APIError 400 when it asks for more frames than the server allows."""
    max_frames = limits.video_max_frames if chat.video_max_frames is None else chat.video_max_frames
    if max_frames > limits.max_video_frames:
        raise APIError(
            400,
            f"video_max_frames={max_frames} is over the server's limit of {limits.max_video_frames} frames per video",
            "video_max_frames",
            "limit",
        )
    return limits.video_fps if chat.video_fps is None else chat.video_fps, max_frames


@contextmanager
def _video_file(url: str, limits: Limits, allowed: Path | None, name: str) -> Iterator[Path]:
    """The file a video URL names: the allowed local file, or a data URL's bytes in a temporary file."""
    if url.startswith("file://"):
        yield allowed_file(url, allowed, name)
        return
    if not url.startswith("data:"):
        raise unsupported_url(url, name)
    data = data_url_bytes(url, VIDEO_DATA_URL_TYPES, limits.max_video_bytes, name)
    with tempfile.TemporaryDirectory(prefix="vlbridge-video-") as folder:
        path = Path(folder) / "video"
        path.write_bytes(data)
        yield path


def video_inputs(
    processor: Processor, prompt: str, chat: ChatRequest, limits: Limits, allowed: Path | None
) -> dict[str, torch.Tensor]:
    """The processor's inputs for `prompt` with the request's videos decoded and sampled; APIError 400 naming the
    video (`video 0`, ...) when one cannot be read."""
    fps, max_frames = sampling(chat, limits)
    with ExitStack() as stack:
        names = [f"video {i}" for i in range(len(chat.video_urls))]
        paths = [
            stack.enter_context(_video_file(url, limits, allowed, name))
            for url, name in zip(chat.video_urls, names, strict=True)
        ]
        try:
            return processor(text=prompt, videos=paths, fps=fps, max_frames=max_frames)
        except VideoError as err:
            message = str(err)
            for path, name in zip(paths, names, strict=True):
                message = message.replace(f"{path}: ", f"{name}: ").replace(str(path), name)
            raise APIError(400, message, "messages", "invalid_video") from None
