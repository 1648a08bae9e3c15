"""Image loading: typed errors for missing, non-image and corrupt files; conversion to RGB."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ConfigError, ImageError
from vlbridge.vision import ImageProcessor, load_image


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"nope\.png does not exist"):
        load_image(path)


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


def save(image: PIL.Image.Image, path: Path) -> Path:
    image.save(path)
    return path


# --- size limits: refused from the header, before decoding --------------------------------------------------------


def test_limits_default_to_the_documented_values():
    cfg = ImageProcessorConfig()
    assert (cfg.max_image_pixels, cfg.max_aspect_ratio) == (8192 * 8192, 50.0)


@pytest.mark.parametrize("size", [(10, 10), (50, 2), (2, 50)])
def test_images_within_the_limits_load(tmp_path, size):
    cfg = ImageProcessorConfig(max_image_pixels=100, max_aspect_ratio=25)
    path = save(PIL.Image.new("RGB", size, (9, 8, 7)), tmp_path / "ok.png")
    assert load_image(path, cfg).size == size
    assert ImageProcessor(dataclasses.replace(cfg, size=8, crop_size=8))([path]).shape == (1, 3, 8, 8)


def test_too_many_pixels_is_refused_naming_size_limit_and_fix(tmp_path):
    path = save(PIL.Image.new("RGB", (11, 10)), tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big\.png is 11x10 = 110 pixels, over image_processor\.max_image_pixels=100"):
        load_image(path, ImageProcessorConfig(max_image_pixels=100))
    with pytest.raises(ImageError, match=r"raise image_processor\.max_image_pixels"):
        ImageProcessor(ImageProcessorConfig(max_image_pixels=100))([path])


def test_thin_strip_is_refused_naming_ratio_limit_and_fix(tmp_path):
    path = save(PIL.Image.new("RGB", (1, 26)), tmp_path / "strip.png")
    with pytest.raises(
        ImageError, match=r"strip\.png is 1x26, aspect ratio 26\.0:1, over image_processor\.max_aspect_ratio=25"
    ):
        load_image(path, ImageProcessorConfig(max_aspect_ratio=25))
    with pytest.raises(
        ImageError, match=r"1x100000, aspect ratio 100000\.0:1, over image_processor\.max_aspect_ratio=50"
    ):
        load_image(PIL.Image.new("RGB", (1, 100_000)))  # PIL images in memory are checked too


def test_pad_to_square_counts_the_padded_square(tmp_path):
    """pad_to_square makes a max(w, h)^2 canvas: a 20x5 image (100 pixels) becomes 400 once padded."""
    path = save(PIL.Image.new("RGB", (20, 5)), tmp_path / "wide.png")
    load_image(path, ImageProcessorConfig(max_image_pixels=100))
    with pytest.raises(ImageError, match=r"wide\.png is 20x5, 20x20 once padded to a square, = 400 pixels"):
        ImageProcessor(ImageProcessorConfig(max_image_pixels=100, pad_to_square=True))([path])


def test_empty_pil_image_is_refused():
    with pytest.raises(ImageError, match="0x5: it has no pixels"):
        ImageProcessor(ImageProcessorConfig())([PIL.Image.new("RGB", (0, 5))])


@pytest.mark.parametrize("field,value", [("max_image_pixels", 0), ("max_aspect_ratio", 0.5)])
def test_limits_must_be_positive(field, value):
    with pytest.raises(ConfigError, match=rf"image_processor\.{field}"):
        ImageProcessor(ImageProcessorConfig(**{field: value}))


# --- high bit depth: scaled to 8 bits, never clipped ---------------------------------------------------------------

SIXTEEN_BIT = np.array([[0, 255, 256, 32767, 32768, 65279, 65280, 65535]], dtype=np.uint16)
HIGH_BYTE = np.array([[0, 0, 1, 127, 128, 254, 255, 255]], dtype=np.uint8)  # v >> 8


@pytest.mark.parametrize("suffix", [".png", ".pgm", ".tif"])  # PIL opens these as I;16, I (PGM) and I;16
def test_16_bit_greys_keep_their_high_byte(tmp_path, suffix):
    path = save(PIL.Image.fromarray(SIXTEEN_BIT), tmp_path / f"deep{suffix}")
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.repeat(HIGH_BYTE[..., None], 3, axis=2))


def test_16_bit_grey_matches_the_same_picture_in_8_bits(tmp_path):
    """The processor sees a 16-bit image exactly as its 8-bit version (v >> 8), as PIL decodes 16-bit colour PNGs."""
    deep = np.random.default_rng(0).integers(0, 65536, (37, 53), dtype=np.uint16)
    path = save(PIL.Image.fromarray(deep), tmp_path / "deep.png")
    processor = ImageProcessor(ImageProcessorConfig(size=24, crop_size=24))
    eight_bit = PIL.Image.fromarray((deep >> 8).astype(np.uint8))
    torch.testing.assert_close(processor([path]), processor([eight_bit]), atol=0, rtol=0)


def test_16_bit_transparency_is_composited_onto_white(tmp_path):
    path = tmp_path / "key.png"
    PIL.Image.fromarray(SIXTEEN_BIT).save(path, transparency=32768)
    expected = HIGH_BYTE.copy()
    expected[0, 4] = 255
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], expected)


def test_float_image_reads_0_to_1_as_black_to_white(tmp_path):
    values = np.array([[0.0, 0.5 / 255, 0.49, 0.5, 254.5 / 255, 1.0]], dtype=np.float32)
    path = save(PIL.Image.fromarray(values), tmp_path / "linear.tif")
    assert PIL.Image.open(path).mode == "F"
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 1], np.rint(values * 255).astype(np.uint8))


@pytest.mark.parametrize("values", [[0.0, 255.0], [-0.25, 0.5], [0.0, np.nan], [0.0, np.inf]])
def test_float_image_outside_0_1_is_refused_not_clipped(tmp_path, values):
    path = save(PIL.Image.fromarray(np.array([values], dtype=np.float32)), tmp_path / "hdr.tif")
    with pytest.raises(ImageError, match=r"hdr\.tif holds float pixels from .* 0\.0 \(black\) to 1\.0 \(white\)"):
        load_image(path)


def test_32_bit_integers_outside_16_bits_are_refused(tmp_path):
    image = PIL.Image.fromarray(np.array([[0, 70_000]], dtype=np.int32))
    assert image.mode == "I"
    with pytest.raises(ImageError, match=r"integer pixels from 0 to 70000, outside 16-bit 0\.\.65535"):
        load_image(image)


# --- files that are not images -------------------------------------------------------------------------------------


def test_paths_that_are_not_image_files_say_what_they_are(tmp_path):
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        load_image(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match=r"/dev/null is not a regular file"):
        load_image("/dev/null")
    with pytest.raises(ImageError, match=r"cannot be reached .*null byte"):
        load_image("a\0b.png")


def test_formats_outside_the_allow_list_are_refused(tmp_path):
    """ICO (and EPS, which would run Ghostscript) are images PIL reads, but not formats vlbridge opens."""
    path = save(PIL.Image.new("RGB", (16, 16)), tmp_path / "icon.ico")
    with pytest.raises(ImageError, match=r"icon\.ico is not an image in a supported format \(BMP, GIF, JPEG"):
        load_image(path)


def test_multi_picture_jpegs_from_cameras_load(tmp_path):
    """PIL reads them through its JPEG opener as format MPO, so the allow-list's JPEG covers them."""
    path = tmp_path / "phone.jpg"
    PIL.Image.new("RGB", (8, 6), (0, 0, 255)).save(
        path, "MPO", save_all=True, append_images=[PIL.Image.new("RGB", (8, 6))]
    )
    assert PIL.Image.open(path).format == "MPO"
    assert load_image(path).getpixel((4, 3))[2] > 200


def test_lazily_opened_corrupt_pil_image_is_an_image_error(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with (
        PIL.Image.open(path) as lazy,
        pytest.raises(ImageError, match=r"PIL image from .*cut\.png is corrupt or truncated"),
    ):
        ImageProcessor(ImageProcessorConfig())([lazy])
