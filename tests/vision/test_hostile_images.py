"""Hostile image files: sizes declared in headers, mutated headers and random bytes, and the memory they may take.

Every file must come out as an ImageError that names it, or as pixels of the configured shape; nothing that PIL
raises may escape, and a header declaring a huge or absurdly thin image must be refused before any pixel is
decoded (PIL's Image.open reads the header only), so it costs no memory.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbridge.bench.measure import status_kib
from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ImageError
from vlbridge.vision import ImageProcessor, load_image

SEED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")
SIGNATURES = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"II*\0", b"P6\n")
# Small limits keep the images the fuzzer may legitimately decode cheap; the defaults are exercised below.
FUZZ_CONFIG = ImageProcessorConfig(size=32, crop_size=32, max_image_pixels=2**20)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and the CRC PIL checks."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A 57-byte PNG that declares width x height 8-bit RGB and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")


@functools.cache
def seed(fmt: str) -> bytes:
    """An 8x6 RGB noise image saved as `fmt`."""
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """`data` with `values` packed as `fmt` over the bytes at `offset`."""
    return data[:offset] + struct.pack(fmt, *values) + data[offset + struct.calcsize(fmt) :]


def declare_size(fmt: str, width: int, height: int) -> bytes:
    """The `fmt` seed with its header rewritten to declare width x height (the pixel data stays 8x6)."""
    data = seed(fmt)
    if fmt == "PNG":
        return data[:8] + png_chunk(b"IHDR", struct.pack(">II", width, height) + data[24:29]) + data[33:]
    if fmt == "JPEG":
        return put(data, data.index(b"\xff\xc0") + 5, ">HH", height, width)  # baseline SOF0: height, width
    if fmt == "TIFF":
        return put(put(data, 18, "<I", width), 30, "<I", height)  # ImageWidth, ImageLength: the first two tags
    if fmt == "PPM":
        return b"P6\n%d %d\n255\n" % (width, height) + data[len(b"P6\n8 6\n255\n") :]
    offset, layout = {"GIF": (6, "<HH"), "WEBP": (26, "<HH"), "BMP": (18, "<ii")}[fmt]  # WEBP: the VP8 frame header
    return put(data, offset, layout, width, height)


@pytest.mark.parametrize("fmt", SEED_FORMATS)
def test_size_rewriting_reaches_the_header(fmt):
    """The fuzzer's declared sizes are the sizes PIL reads, so the size checks are what they exercise."""
    assert PIL.Image.open(io.BytesIO(declare_size(fmt, 8, 6))).size == (8, 6)
    assert PIL.Image.open(io.BytesIO(declare_size(fmt, 300, 7))).size == (300, 7)


def test_decompression_bomb_header_names_size_limit_and_fix(tmp_path):
    """65535x65535 (4.3 G pixels) is past PIL's own hard limit: PIL refuses while opening, we say so as ImageError."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(65535, 65535))
    with pytest.raises(ImageError, match=r"bomb\.png declares an image too large to open: .*4294836225 pixels") as err:
        load_image(path)
    assert "image_processor.max_image_pixels=67,108,864" in str(err.value)
    assert "PIL.Image.MAX_IMAGE_PIXELS" in str(err.value)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(9000, 9000), (10_000, 10_000)])  # under / over PIL's warning (89.5 M pixels)
def test_oversized_header_is_refused_before_decoding(tmp_path, size):
    """The file holds no pixel data: only a check on the header can name the size."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(*size))
    with pytest.raises(ImageError, match=r"huge\.png .*(9000x9000 = 81,000,000 pixels|100000000 pixels)"):
        load_image(path)


def test_thin_strip_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "strip.png"
    path.write_bytes(png_header(1, 100_000))
    with pytest.raises(ImageError, match=r"strip\.png is 1x100000, aspect ratio 100000\.0:1"):
        load_image(path)


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """A seed with a rewritten declared size, a seed with bytes overwritten and cut short, or random bytes."""
    kind = draw(st.sampled_from(["declared_size", "mutated", "random"]))
    if kind == "random":
        return draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=300))
    fmt = draw(st.sampled_from(SEED_FORMATS))
    if kind == "declared_size":
        side = st.integers(0, 65535)
        return declare_size(fmt, draw(side), draw(side))
    data = bytearray(seed(fmt))
    for offset, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8)):
        data[offset] = value
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # raised, it must still be an ImageError
@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on the corrupt TIFF tags it skips
def test_fuzzed_images_give_an_image_error_or_pixels(tmp_path):
    """200 hostile files (a fixed sequence, for a reproducible CI): each an ImageError naming it, or (1, 3, 32, 32)
    finite pixels. The run raises this process's peak memory by under 100 MiB; that bound only shows when the peak
    was lower before, so the fresh-process test below is the exact one."""
    processor = ImageProcessor(FUZZ_CONFIG)
    path = tmp_path / "fuzzed.img"

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(data=hostile_bytes())
    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            pixels = processor([path])
        except ImageError as err:
            assert str(path) in str(err), err
            return
        assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.float32 and torch.isfinite(pixels).all()

    before = status_kib("VmHWM")
    check()
    assert status_kib("VmHWM") - before < 100 * 1024


MEMORY_PROBE = """
import json, resource, sys
import PIL.Image
from vlbridge.bench.measure import status_kib
from vlbridge.bench.measure import status_kib
from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ImageError
from vlbridge.vision import ImageProcessor

processor = ImageProcessor(ImageProcessorConfig())
processor([PIL.Image.new("RGB", (300, 200))])  # warm up: allocator pools and lazy imports are not the images' cost
# a runaway allocation then fails fast (MemoryError) instead of swapping: 512 MiB of address space above today's
resource.setrlimit(resource.RLIMIT_AS, ((status_kib("VmSize") + 2**19) * 1024, resource.RLIM_INFINITY))
before = status_kib("VmHWM")
outcomes = {}
for path in sys.argv[1:]:
    try:
        outcomes[path] = str(tuple(processor([path]).shape))
    except ImageError:
        outcomes[path] = "ImageError"
print(json.dumps({"outcomes": outcomes, "peak_growth_kib": status_kib("VmHWM") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_hostile_sizes_take_bounded_memory(tmp_path):
    """In a fresh process with the default limits: real 1x100000 and 1x20000 PNGs (before the limits, 1x20000 alone
    peaked at 9.6 GB in the shortest-edge resize), the 65535x65535 header, and a strip at the 50:1 limit together
    raise the process's peak memory by under 100 MiB."""
    files = {
        "strip_1x100000.png": PIL.Image.new("RGB", (1, 100_000), (10, 200, 30)),
        "strip_1x20000.png": PIL.Image.new("RGB", (1, 20_000), (10, 200, 30)),
        "at_limit_5000x100.png": PIL.Image.new("RGB", (5000, 100), (10, 200, 30)),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    (tmp_path / "bomb.png").write_bytes(png_header(65535, 65535))
    paths = [str(tmp_path / name) for name in [*files, "bomb.png"]]
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *paths], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert list(result["outcomes"].values()) == ["ImageError", "ImageError", "(1, 3, 224, 224)", "ImageError"]
    assert result["peak_growth_kib"] < 100 * 1024, result
