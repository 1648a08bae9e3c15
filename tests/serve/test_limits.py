"""Image URLs within the server's limits: data URLs of each accepted format, decompression bombs refused from the
header, file:// only inside the allowed folder, no network."""

from __future__ import annotations

import base64
import io

import PIL.Image
import pytest

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ImageError
from vlbridge.serve.limits import Limits, open_image
from vlbridge.serve.schemas import APIError

CONFIG = ImageProcessorConfig()


def _data_url(image: PIL.Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_data_url_formats(fmt: str) -> None:
    image = PIL.Image.new("RGB", (40, 30), (200, 10, 10))
    opened = open_image(_data_url(image, fmt), Limits(), CONFIG, None, 0)
    assert opened.size == (40, 30) and opened.mode == "RGB"


def test_decompression_bomb_refused_from_its_header() -> None:
    bomb = _data_url(PIL.Image.new("1", (5000, 5000)), "PNG")  # a few KB declaring 25M pixels
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="25,000,000 pixels"):
        open_image(bomb, Limits(max_image_pixels=4096 * 4096), CONFIG, None, 0)


def test_byte_limit_and_bad_urls() -> None:
    url = _data_url(PIL.Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(APIError, match="image limit of 10 bytes"):
        open_image(url, Limits(max_image_bytes=10), CONFIG, None, 0)
    with pytest.raises(APIError, match="no network requests"):
        open_image("http://example.test/a.png", Limits(), CONFIG, None, 0)
    with pytest.raises(APIError, match="base64 images"):
        open_image("data:text/plain;base64,aGk=", Limits(), CONFIG, None, 0)
    with pytest.raises(APIError, match="not valid base64"):
        open_image("data:image/png;base64,@@@", Limits(), CONFIG, None, 0)


def test_file_urls_only_inside_the_allowed_folder(tmp_path) -> None:
    allowed = tmp_path / "media"
    allowed.mkdir()
    PIL.Image.new("RGB", (20, 20)).save(allowed / "a.png")
    PIL.Image.new("RGB", (20, 20)).save(tmp_path / "secret.png")
    assert open_image(f"file://{allowed / 'a.png'}", Limits(), CONFIG, allowed, 0).size == (20, 20)
    with pytest.raises(APIError, match="outside the allowed media folder") as caught:
        open_image(f"file://{allowed}/../secret.png", Limits(), CONFIG, allowed, 0)
    assert caught.value.status == 403
    with pytest.raises(APIError, match="--allowed-media-path"):
        open_image(f"file://{allowed / 'a.png'}", Limits(), CONFIG, None, 0)
