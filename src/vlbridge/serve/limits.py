"""Request limits of the server, and image URLs (data: and file:) turned into images within them; video URLs share
the data: and file:// rules (serve/videos.py).

Every limit has a safe default and a `vlbridge serve` flag. Images are untrusted: a data URL's size is checked before
it is decoded, and its pixel count from the header before any pixel is (vision/loading.py's checks: a decompression
bomb costs no memory). `file://` URLs are read only inside the folder the operator allowed; http(s) URLs are refused,
as the server makes no network requests.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import PIL.Image

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ImageError
from vlbridge.serve.schemas import APIError
from vlbridge.vision.loading import DECODE_ERRORS, check_size, corrupt, decode, load_image

DATA_URL_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 32 * 2**20  # the whole JSON body, base64 images included
    max_image_bytes: int = 16 * 2**20  # one image's encoded bytes
    max_image_pixels: int = 4096 * 4096  # one image's declared width x height
    max_images: int = 8  # images per request
    max_queue: int = 256  # requests waiting for the engine; more get 503
    timeout_s: float = 300.0  # per request, from when it starts running
    default_max_tokens: int = 256  # when the request sets neither max_tokens nor max_completion_tokens
    max_videos: int = 2  # videos per request
    max_video_bytes: int = 64 * 2**20  # one video's encoded bytes (a data URL's)
    max_video_frames: int = 64  # the most frames a request may have a video sampled to
    video_fps: float = 1.0  # frames sampled per second of video when the request does not say (`video_fps`)
    video_max_frames: int = 32  # frames per video when the request does not say (`video_max_frames`)


def data_url_bytes(url: str, types: Collection[str], max_bytes: int, name: str) -> bytes:
    """The bytes of a base64 data URL of one of the media `types`, checked against `max_bytes` before decoding."""
    header, _, payload = url.partition(",")
    media = header[5:].split(";")[0].lower()
    kind = name.split()[0]  # "image" or "video"
    if media not in types or not header.endswith(";base64"):
        raise APIError(400, f"{name}: data URLs must be base64 {kind}s of type {', '.join(types)}, got {header[:40]!r}")
    if len(payload) * 3 // 4 > max_bytes:
        raise APIError(400, f"{name} is over the server's {kind} limit of {max_bytes:,} bytes", code="limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(400, f"{name}: the data URL is not valid base64 ({err})") from err


def allowed_file(url: str, allowed: Path | None, name: str) -> Path:
    """The local file a file:// URL names, which must lie inside the allowed media folder (403 otherwise)."""
    if allowed is None:
        raise APIError(400, f"{name}: file:// URLs are off; start the server with --allowed-media-path DIR")
    path = Path(unquote(urlparse(url).path)).resolve()
    if not path.is_relative_to(allowed.resolve()):
        raise APIError(403, f"{name}: {path} is outside the allowed media folder", code="media_path")
    return path


def unsupported_url(url: str, name: str) -> APIError:
    """The 400 for a URL that is neither data: nor file://: http(s) is never fetched, others are unknown."""
    kind = name.split()[0]
    if url.startswith(("http://", "https://")):
        return APIError(
            400,
            f"{name}: http(s) {kind} URLs are not fetched (this server makes no network requests); "
            f"send the {kind} as a data: URL (base64)",
        )
    return APIError(400, f"{name}: unsupported {kind} URL {url[:40]!r}; use a data: URL or a file:// URL")


def _from_data_url(url: str, limits: Limits, config: ImageProcessorConfig, name: str) -> PIL.Image.Image:
    data = data_url_bytes(url, DATA_URL_TYPES, limits.max_image_bytes, name)
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=tuple(set(DATA_URL_TYPES.values())))
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name} declares an image too large to open ({err})") from err
    except PIL.UnidentifiedImageError as err:
        raise ImageError(f"{name} is not a PNG, JPEG, WebP or GIF image, or its header is damaged") from err
    except DECODE_ERRORS as err:
        raise corrupt(name, err) from err
    with image:
        check_size(*image.size, config, name)
        return decode(image, name)


def open_image(
    url: str, limits: Limits, config: ImageProcessorConfig, allowed: Path | None, index: int
) -> PIL.Image.Image:
    """The image a URL names, as RGB, within the limits; APIError (400/403) or ImageError otherwise."""
    name = f"image {index}"
    config = replace(config, max_image_pixels=min(config.max_image_pixels, limits.max_image_pixels))
    if url.startswith("data:"):
        return _from_data_url(url, limits, config, name)
    if url.startswith("file://"):
        return load_image(allowed_file(url, allowed, name), config)
    raise unsupported_url(url, name)
