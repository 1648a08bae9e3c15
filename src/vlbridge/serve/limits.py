"""Request limits of the server, and image URLs (data: and file:) turned into images within them.

Every limit has a safe default and a `vlbridge serve` flag. Images are untrusted: a data URL's size is checked before
it is decoded, and its pixel count from the header before any pixel is (vision/loading.py's checks: a decompression
bomb costs no memory). `file://` URLs are read only inside the folder the operator allowed; http(s) URLs are refused,
as the server makes no network requests.
"""

from __future__ import annotations

import base64
import binascii
import io
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


def _from_data_url(url: str, limits: Limits, config: ImageProcessorConfig, name: str) -> PIL.Image.Image:
    header, _, payload = url.partition(",")
    media = header[5:].split(";")[0].lower()
    if media not in DATA_URL_TYPES or not header.endswith(";base64"):
        raise APIError(
            400, f"{name}: data URLs must be base64 images of type {', '.join(DATA_URL_TYPES)}, got {header[:40]!r}"
        )
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise APIError(
            400, f"{name} is over the server's image limit of {limits.max_image_bytes:,} bytes", code="limit"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(400, f"{name}: the data URL is not valid base64 ({err})") from err
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


def _from_file_url(url: str, config: ImageProcessorConfig, allowed: Path | None, name: str) -> PIL.Image.Image:
    if allowed is None:
        raise APIError(400, f"{name}: file:// URLs are off; start the server with --allowed-media-path DIR")
    path = Path(unquote(urlparse(url).path)).resolve()
    if not path.is_relative_to(allowed.resolve()):
        raise APIError(403, f"{name}: {path} is outside the allowed media folder", code="media_path")
    return load_image(path, config)


def open_image(
    url: str, limits: Limits, config: ImageProcessorConfig, allowed: Path | None, index: int
) -> PIL.Image.Image:
    """The image a URL names, as RGB, within the limits; APIError (400/403) or ImageError otherwise."""
    name = f"image {index}"
    config = replace(config, max_image_pixels=min(config.max_image_pixels, limits.max_image_pixels))
    if url.startswith("data:"):
        return _from_data_url(url, limits, config, name)
    if url.startswith("file://"):
        return _from_file_url(url, config, allowed, name)
    if url.startswith(("http://", "https://")):
        raise APIError(
            400,
            f"{name}: http(s) image URLs are not fetched (this server makes no network requests); "
            "send the image as a data: URL (base64)",
        )
    raise APIError(400, f"{name}: unsupported image URL {url[:40]!r}; use a data: URL or a file:// URL")
