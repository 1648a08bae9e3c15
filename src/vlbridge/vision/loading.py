"""Image loading: a path or a PIL image -> an RGB PIL image; a missing, unreadable or corrupt file raises ImageError."""

from __future__ import annotations

from pathlib import Path

import PIL.Image

from vlbridge.errors import ImageError

ImageSource = str | Path | PIL.Image.Image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB copy of `image`; transparent pixels are composited onto white (as HF's convert_to_rgb)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource) -> PIL.Image.Image:
    """An RGB image from a path or a PIL image; missing, unreadable or corrupt files raise ImageError."""
    if isinstance(source, PIL.Image.Image):
        return to_rgb(source)
    if not isinstance(source, (str, Path)):
        raise ImageError(f"expected an image path or a PIL image, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist (or is not a file); check the path")
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except PIL.UnidentifiedImageError as err:
        raise ImageError(f"{path} is not an image PIL can read ({err}); pass a PNG/JPEG/... file") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"image file {path} is corrupt or truncated ({err}); re-export or replace it") from err
