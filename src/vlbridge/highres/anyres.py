"""AnyRes (LLaVA-NeXT): tile a high-resolution image into crop-size views plus a base view, and pack their tokens.

Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge" (2024), with transformers' arithmetic
(LlavaNextImageProcessor, LlavaNextProcessor, LlavaNextModel.pack_image_features) so counts and pixels agree:
- the grid is the pinpoint (height, width) with the largest effective resolution min(int(W*s)*int(H*s), W*H),
  s = min(w/W, h/H); ties go to the least wasted area, then to the first listed;
- the image is resized keeping its aspect (the fitting side exact, the other ceil-rounded and capped), centred on a
  black canvas of the pinpoint's size and cut into tiles row-major; a base view (the whole image resized to the tile
  size) goes first;
- tile tokens are laid out as one (rows * g, cols * g) grid (g x g tokens a tile), the rows or columns the black
  padding fills are cut away (`unpad_bounds`, with the round(..., 7) transformers adopted after count mismatches),
  `image_newline` ends each grid row, and the result follows the base view's tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ConfigError, PlaceholderError
from vlbridge.vision.loading import ImageSource, load_image
from vlbridge.vision.processor import ImageProcessor

Size = tuple[int, int]
"""(height, width), as transformers' image_sizes and pinpoints give them."""


def check_pinpoints(pinpoints: Sequence[Sequence[int]], tile: int) -> list[Size]:
    """The pinpoints as (height, width) pairs; ConfigError unless each is a positive multiple of the tile side."""
    if not pinpoints:
        raise ConfigError("image_processor.image_grid_pinpoints is empty; list at least one [height, width]")
    sizes = []
    for point in pinpoints:
        if len(point) != 2 or any(not isinstance(v, int) or v < tile or v % tile for v in point):
            raise ConfigError(
                f"image_processor.image_grid_pinpoints entry {list(point)} must be [height, width], each a positive "
                f"multiple of the tile side {tile} (image_processor.crop_size)"
            )
        sizes.append((int(point[0]), int(point[1])))
    return sizes


def select_best_resolution(size: Size, pinpoints: Sequence[Size]) -> Size:
    """The pinpoint that keeps the most of an image of `size` (see the module docstring for the rule)."""
    height, width = size
    best, best_effective, best_waste = pinpoints[0], -1, math.inf
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (pin_h, pin_w), effective, waste
    return best


def fit_size(size: Size, target: Size) -> Size:
    """(height, width) of an image of `size` resized to fit `target` keeping its aspect: the side that limits the
    scale is exact, the other ceil-rounded and capped at the target."""
    (height, width), (target_h, target_w) = size, target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def grid_shape(size: Size, pinpoints: Sequence[Size], tile: int) -> Size:
    """(rows, cols) of tiles an image of `size` is cut into."""
    pin_h, pin_w = select_best_resolution(size, pinpoints)
    return pin_h // tile, pin_w // tile


def unpad_bounds(size: Size, grid: Size) -> tuple[slice, slice]:
    """(row slice, column slice) of a (rows, cols) token grid covering the padded canvas that hold an image of `size`;
    the black bands the padding added are left out (symmetrically, an odd leftover kept)."""
    (height, width), (rows, cols) = size, grid
    if width / height > cols / rows:
        kept = int(round(height * (cols / width), 7))
        pad = (rows - kept) // 2
        return slice(pad, rows - pad), slice(0, cols)
    kept = int(round(width * (rows / height), 7))
    pad = (cols - kept) // 2
    return slice(0, rows), slice(pad, cols - pad)


def num_tiles(size: Size, pinpoints: Sequence[Size], tile: int) -> int:
    """Views an image of `size` takes: rows * cols tiles plus the base view."""
    rows, cols = grid_shape(size, pinpoints, tile)
    return rows * cols + 1


def num_tokens(size: Size, pinpoints: Sequence[Size], tile: int, side: int) -> int:
    """Tokens an image of `size` takes when each view gives a side x side token grid: the base view's, then the
    unpadded tile grid with one newline token per row."""
    rows, cols = grid_shape(size, pinpoints, tile)
    keep_rows, keep_cols = unpad_bounds(size, (rows * side, cols * side))
    n_rows, n_cols = keep_rows.stop - keep_rows.start, keep_cols.stop - keep_cols.start
    return side * side + n_rows * (n_cols + 1)


def pack(tokens: torch.Tensor, size: Size, pinpoints: Sequence[Size], tile: int, newline: torch.Tensor) -> torch.Tensor:
    """One image's view tokens (1 + rows*cols, side*side, D), base view first, -> its sequence (num_tokens, D)."""
    rows, cols = grid_shape(size, pinpoints, tile)
    views, k, dim = tokens.shape
    side = math.isqrt(k)
    assert views == rows * cols + 1 and side * side == k, "views and tokens per view must match the image's grid"
    grid = tokens[1:].reshape(rows, cols, side, side, dim).permute(0, 2, 1, 3, 4)  # (rows, g, cols, g, D)
    grid = grid.reshape(rows * side, cols * side, dim)  # (R, C, D)
    keep_rows, keep_cols = unpad_bounds(size, (rows * side, cols * side))
    grid = grid[keep_rows, keep_cols]  # (R', C', D)
    ends = newline.to(grid.dtype).expand(grid.shape[0], 1, dim)  # (R', 1, D)
    return torch.cat([tokens[0], torch.cat([grid, ends], dim=1).reshape(-1, dim)])  # (num_tokens, D)


def real_views(
    pixel_values: torch.Tensor, image_sizes: torch.Tensor, pinpoints: Sequence[Size], tile: int
) -> tuple[torch.Tensor, list[int]]:
    """The views (N_views, 3, H, W) of a (B, max_views, 3, H, W) batch without its zero padding, and views per image."""
    counts = [num_tiles((int(h), int(w)), pinpoints, tile) for h, w in image_sizes.tolist()]
    if len(counts) != pixel_values.shape[0] or max(counts, default=0) > pixel_values.shape[1]:
        raise PlaceholderError(
            f"pixel_values {tuple(pixel_values.shape)} do not fit image_sizes {image_sizes.tolist()}: build the inputs "
            "with this model's processor (AnyRes gives (images, views, 3, H, W) and one (height, width) per image)"
        )
    views = torch.cat([images[:n] for images, n in zip(pixel_values, counts, strict=True)])  # (N_views, 3, H, W)
    return views, counts


class AnyResImageProcessor:
    """Images -> (pixel_values (B, max_views, 3, H, W) zero-padded, image_sizes (B, 2) as (height, width)), equal to
    transformers' LlavaNextImageProcessor (PIL backend); each view is finished by the single-view ImageProcessor."""

    def __init__(self, config: ImageProcessorConfig) -> None:
        if config.image_grid_pinpoints is None:
            raise ConfigError("AnyRes needs image_processor.image_grid_pinpoints ([[height, width], ...])")
        if config.pad_to_square:
            raise ConfigError(
                "image_processor.pad_to_square and image_grid_pinpoints exclude each other: AnyRes pads each image to "
                "its grid with black; drop one of them"
            )
        self.config = config
        self.tile = config.crop_size
        self.pinpoints = check_pinpoints(config.image_grid_pinpoints, self.tile)
        self.views = ImageProcessor(config)

    def views_of(self, image: ImageSource) -> tuple[torch.Tensor, Size]:
        """One image -> its views (1 + rows*cols, 3, H, W), base view first, and its (height, width)."""
        cfg = self.config
        image = load_image(image, cfg)
        size = (image.height, image.width)
        pin_h, pin_w = select_best_resolution(size, self.pinpoints)
        new_h, new_w = fit_size(size, (pin_h, pin_w))
        canvas = np.zeros((pin_h, pin_w, 3), dtype=np.uint8)
        top, left = (pin_h - new_h) // 2, (pin_w - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = np.asarray(image.resize((new_w, new_h), cfg.resample))
        base_side = cfg.crop_size if cfg.resize_mode == "exact" else cfg.size
        views = [image.resize((base_side, base_side), cfg.resample)]
        t = self.tile
        views += [
            PIL.Image.fromarray(canvas[i : i + t, j : j + t]) for i in range(0, pin_h, t) for j in range(0, pin_w, t)
        ]
        return torch.stack([self.views.finish(view) for view in views]), size

    def __call__(self, images: Sequence[ImageSource]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values (B, max_views, 3, H, W), image_sizes (B, 2) long); images with fewer views are zero-padded."""
        done = [self.views_of(image) for image in images]
        most = max((views.shape[0] for views, _ in done), default=1)
        pixel_values = torch.zeros(len(done), most, 3, self.tile, self.tile)
        for i, (views, _) in enumerate(done):
            pixel_values[i, : views.shape[0]] = views
        image_sizes = torch.tensor([size for _, size in done], dtype=torch.long).reshape(len(done), 2)
        return pixel_values, image_sizes
