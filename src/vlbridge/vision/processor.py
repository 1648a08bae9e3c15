"""Image preprocessing: pixel-exact with HF's CLIPImageProcessor / SiglipImageProcessor (PIL path).

Steps, in HF's order and arithmetic: load and convert to RGB (vision/loading.py: transparency composited onto white),
optionally LLaVA's pad-to-square (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023: the image
centred on a square filled with the mean colour, so no content is cropped away), PIL resize (shortest edge to `size`,
the long edge truncated as int(size * long / short); or exactly to `crop_size`), centre crop (zero-padded when too
small), rescale in float64 then float32, normalise per channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ConfigError, ImageError
from vlbridge.vision.loading import ImageSource, load_image


def pad_to_square(image: PIL.Image.Image, fill: tuple[int, ...]) -> PIL.Image.Image:
    """LLaVA's expand2square: `image` centred at ((S-w)//2, (S-h)//2) on an S=max(w, h) square of colour `fill`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = PIL.Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short edge resized to `size`, the long one int-truncated (HF's rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def center_crop(array: np.ndarray, side: int) -> np.ndarray:
    """Centre crop (H, W, C) to (side, side); a smaller image is first zero-padded, centred with ceil offsets."""
    height, width = array.shape[:2]
    if height < side or width < side:
        new_h, new_w = max(height, side), max(width, side)
        top, left = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
        canvas = np.zeros((new_h, new_w, array.shape[2]), dtype=array.dtype)
        canvas[top : top + height, left : left + width] = array
        array, height, width = canvas, new_h, new_w
    top, left = (height - side) // 2, (width - side) // 2
    return array[top : top + side, left : left + side]


class ImageProcessor:
    """PIL images -> normalised pixel tensors, equal to HF's CLIP/SigLIP image processors."""

    def __init__(self, config: ImageProcessorConfig) -> None:
        if config.resize_mode not in ("shortest_edge", "exact"):
            raise ConfigError(
                f"image_processor.resize_mode {config.resize_mode!r} is unknown; choose shortest_edge or exact"
            )
        if len(config.image_mean) != 3 or len(config.image_std) != 3:
            raise ConfigError("image_processor.image_mean and image_std need 3 values (R, G, B)")
        if config.max_image_pixels < 1 or config.max_aspect_ratio < 1:
            raise ConfigError(
                f"image_processor.max_image_pixels ({config.max_image_pixels}) must be at least 1 and "
                f"image_processor.max_aspect_ratio ({config.max_aspect_ratio}) at least 1 (a square)"
            )
        self.config = config
        self._mean = np.array(config.image_mean, dtype=np.float32)
        self._std = np.array(config.image_std, dtype=np.float32)
        self._fill = tuple(int(m * 255) for m in config.image_mean)

    def preprocess_one(self, image: ImageSource) -> torch.Tensor:
        """One image (PIL or path) -> (3, H, W) float32; its size is checked against the config's limits first."""
        image = load_image(image, self.config)
        if self.config.pad_to_square:
            image = pad_to_square(image, self._fill)
        return self.finish(image)

    def finish(self, image: PIL.Image.Image) -> torch.Tensor:
        """A loaded RGB image -> (3, H, W) float32: resize, centre crop, rescale, normalise (AnyRes finishes each of
        its views with this too)."""
        cfg = self.config
        if cfg.resize_mode == "exact":
            new_size = (cfg.crop_size, cfg.crop_size)
        else:
            new_size = shortest_edge_size(*image.size, cfg.size)
        image = image.resize(new_size, resample=cfg.resample)
        array = np.asarray(image)  # (H, W, 3) uint8
        if cfg.do_center_crop:
            array = center_crop(array, cfg.crop_size)
        pixels = (array.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
        pixels = (pixels - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # (3, H, W)

    def __call__(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """A batch (N, 3, H, W) float32; every image must come out the same size (true when centre-cropping)."""
        if not images:
            return torch.empty(0, 3, self.config.crop_size, self.config.crop_size)
        tensors = [self.preprocess_one(image) for image in images]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ImageError(
                f"images came out in different sizes {sorted(shapes)}; enable do_center_crop or use resize_mode exact"
            )
        return torch.stack(tensors)
