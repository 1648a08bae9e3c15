"""Image loading: a path or a PIL image -> an RGB PIL image, in bounded memory; every failure raises ImageError.

Images are untrusted input, so their size is checked against the image processor config's limits
(`max_image_pixels`, `max_aspect_ratio`; the reasons for their defaults are in ImageProcessorConfig) before any
pixel is decoded: PIL's `Image.open` parses only the header, and `image.size` is known before `load()`. A header
that declares a decompression bomb (a few bytes that would decode to gigabytes) is refused there. Files are opened
only in the formats listed in FORMATS. 16-bit, 32-bit and float pixels are scaled to 8 bits by a stated rule, or
refused where their scale is unknowable (to_8bit), never clipped as PIL's convert("RGB") does.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
import PIL.Image

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ImageError

ImageSource = str | Path | PIL.Image.Image
# The formats a file may be in: photos and screenshots. PIL's rarer decoders (40-odd formats) stay out of reach of
# untrusted files, and so does EPS, which PIL decodes by running Ghostscript. (PIL's JPEG opener also reads the
# multi-picture JPEGs many cameras and phones write, as format MPO.)
FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
# What PIL raises on malformed data, as Pillow's own fuzz tests list it (its header parsers turn IndexError,
# KeyError, TypeError, EOFError and struct.error into SyntaxError). MemoryError is left out: the size limits rule
# it out for image data, so one is a real shortage that a "corrupt file" message would hide.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, NotImplementedError)


def check_size(width: int, height: int, config: ImageProcessorConfig, name: str) -> None:
    """Refuse an image the processor could not handle in bounded memory: no pixels, more than `max_image_pixels`
    (counting the padded square when padding), or a long side over `max_aspect_ratio` times the short one."""
    if width < 1 or height < 1:
        raise ImageError(f"{name} is {width}x{height}: it has no pixels; pass a non-empty image")
    short, long = sorted((width, height))
    held = long * long if config.pad_to_square else width * height
    if held > config.max_image_pixels:
        padded = f", {long}x{long} once padded to a square," if config.pad_to_square else ""
        raise ImageError(
            f"{name} is {width}x{height}{padded} = {held:,} pixels, over image_processor.max_image_pixels="
            f"{config.max_image_pixels:,}; downscale it, or if you trust the source and have the memory, raise "
            "image_processor.max_image_pixels in the model's config"
        )
    if long > config.max_aspect_ratio * short:
        raise ImageError(
            f"{name} is {width}x{height}, aspect ratio {long / short:.1f}:1, over image_processor.max_aspect_ratio="
            f"{config.max_aspect_ratio:g}; cut it into parts nearer square, or raise image_processor.max_aspect_ratio "
            "in the model's config"
        )


def to_8bit(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """An 8-bit grey copy ('L', or 'LA' when the file marks a grey value transparent) of a 16-bit, 32-bit integer
    or float image; any other mode is returned as it is.

    PIL's convert("RGB") clips these modes to 0..255, so a 16-bit PNG comes out nearly white and a 0..1 float TIFF
    black (transformers' processors do the same). Instead: 16-bit samples keep their high byte (v >> 8), as PIL
    itself decodes 16-bit colour PNGs, so a grey and a colour 16-bit file of one picture agree; 'I' (32-bit) is
    read the same way, since PIL's PGM/PPM decoder fills it with 16-bit samples; floats are read as 0.0 black to
    1.0 white, the convention of float image arrays, and rounded to the nearest level (round-half-even of v * 255).
    Values outside those ranges (a true 32-bit image, floats on another scale such as PIL's convert("F") 0..255,
    NaN) have no knowable scale: they are refused, never clipped into a silently wrong picture.
    """
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image)  # (H, W): uint16 ('I;16*'), int32 ('I') or float32 ('F')
    low, high = values.min(), values.max()
    if image.mode == "F":
        if not 0.0 <= low <= high <= 1.0:
            raise ImageError(
                f"{name} holds float pixels from {low:g} to {high:g}; vlbridge reads float images as 0.0 (black) to "
                "1.0 (white) and will not guess another scale: divide by its maximum (255 for PIL's convert('F')) "
                "or save it as an 8- or 16-bit image"
            )
        grey = np.rint(values * 255.0).astype(np.uint8)
    else:
        if not 0 <= low <= high <= 65535:
            raise ImageError(
                f"{name} holds integer pixels from {low} to {high}, outside 16-bit 0..65535, so their scale is "
                "unknown; save it as an 8- or 16-bit image"
            )
        grey = (values >> 8).astype(np.uint8)
    transparent = image.info.get("transparency")  # a 16-bit PNG's tRNS: the one grey value drawn transparent
    if transparent is not None:
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(np.stack([grey, alpha], axis=-1))  # (H, W, 2): 'LA'
    return PIL.Image.fromarray(grey)


def to_rgb(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """RGB copy of `image` (named `name` in errors): high bit depths scaled to 8 bits (to_8bit), then transparent
    pixels composited onto white, as HF's convert_to_rgb does."""
    image = to_8bit(image, name)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def describe(image: PIL.Image.Image) -> str:
    """How error messages name an in-memory PIL image: its mode, size and, when PIL opened it, its file."""
    filename = getattr(image, "filename", "")
    return f"the {image.mode} {image.width}x{image.height} PIL image" + (f" from {filename}" if filename else "")


def decode(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """`image`'s pixels decoded (a no-op once loaded) and converted to RGB; PIL's errors become ImageError."""
    try:
        image.load()
        return to_rgb(image, name)
    except DECODE_ERRORS as err:
        raise corrupt(name, err) from err


def corrupt(name: str, err: Exception) -> ImageError:
    """The error for data PIL cannot decode, with PIL's own reason."""
    return ImageError(
        f"{name} is corrupt or truncated, or a variant PIL cannot decode ({type(err).__name__}: {err}); "
        "re-export it as PNG or JPEG, or replace it"
    )


def open_file(path: Path) -> BinaryIO:
    """`path` opened for reading, once it is known to be a non-empty regular file; else an ImageError saying what
    it is instead."""
    try:
        info = path.stat()
    except FileNotFoundError as err:
        raise ImageError(f"image file {path} does not exist; check the path") from err
    except (OSError, ValueError) as err:
        raise ImageError(f"image file {path} cannot be reached ({err}); check the path") from err
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path} is a directory, not an image file; pass the path of an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path} is not a regular file (a device, pipe or socket); pass the path of an image file")
    if info.st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes): the copy or download that made it failed; redo it")
    try:
        return path.open("rb")
    except OSError as err:
        raise ImageError(f"image file {path} cannot be read ({err.strerror}); check its permissions") from err


def load_image(source: ImageSource, config: ImageProcessorConfig | None = None) -> PIL.Image.Image:
    """An RGB image from a path or a PIL image, within `config`'s size limits (default: ImageProcessorConfig()'s).

    A file's size is checked from its header before decoding, so a huge or absurdly thin image costs no memory;
    every failure (missing, unreadable, empty, not an image or not in FORMATS, oversized, corrupt, a pixel scale
    that cannot be known) raises ImageError naming the file or PIL image and the fix.
    """
    config = config or ImageProcessorConfig()
    if isinstance(source, PIL.Image.Image):
        name = describe(source)
        check_size(*source.size, config, name)
        return decode(source, name)
    if not isinstance(source, (str, Path)):
        raise ImageError(f"expected an image path or a PIL image, got {type(source).__name__}")
    path = Path(source)
    with open_file(path) as file:
        try:
            image = PIL.Image.open(file, formats=FORMATS)
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
            raise ImageError(
                f"{path} declares an image too large to open: PIL refuses it before vlbridge's own limit "
                f"(image_processor.max_image_pixels={config.max_image_pixels:,}) is checked ({err}); downscale it, "
                "or if you trust the source, raise that limit and PIL.Image.MAX_IMAGE_PIXELS (PIL refuses twice "
                "its value)"
            ) from err
        except PIL.UnidentifiedImageError as err:
            raise ImageError(
                f"{path} is not an image in a supported format ({', '.join(FORMATS)}), or its header is damaged "
                f"({err}); convert it to PNG or JPEG"
            ) from err
        except DECODE_ERRORS as err:
            raise corrupt(str(path), err) from err
        with image:
            check_size(*image.size, config, str(path))
            return decode(image, str(path))
