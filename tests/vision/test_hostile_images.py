"""Hostile image files: sizes declared in headers, and the memory they may take.

A header declaring a huge or absurdly thin image must be refused as an ImageError before any pixel is decoded
(PIL's Image.open reads the header only), so it costs no memory.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import PIL.Image
import pytest

from vlbridge.errors import ImageError
from vlbridge.vision import load_image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and the CRC PIL checks."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A 57-byte PNG that declares width x height 8-bit RGB and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")


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


MEMORY_PROBE = """
import json, resource, sys
import PIL.Image
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
