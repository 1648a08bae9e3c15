"""Image loading: typed errors for missing, non-image and corrupt files; conversion to RGB."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest

from vlbridge.errors import ImageError
from vlbridge.vision import load_image


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"nope\.png does not exist"):
        load_image(path)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path)  # a directory is not an image file


def test_text_file_named_png_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(ImageError, match=r"notes\.png is not an image"):
        load_image(str(path))


def test_truncated_png_is_reported_corrupt(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut\.png is corrupt or truncated"):
        load_image(path)


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    PIL.Image.new("L", (5, 3), 77).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 3) and image.getpixel((0, 0)) == (77, 77, 77)
    transparent = PIL.Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert load_image(transparent).getpixel((1, 1)) == (255, 255, 255)  # composited onto white, as HF does
