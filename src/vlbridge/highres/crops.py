"""LLaVA-Mini HD's views of an image: k x k crops of the image at k times the encoder's size, then the whole image.

Zhang et al., "LLaVA-Mini: Efficient Image and Video Large Multimodal Models with One Vision Token" (2025), whose HD
model splits a 672 px image into 2 x 2 crops of 336 px beside the whole image at 336 px (its code stacks the crops
first and the whole image last, and tiles the crops' features back into one grid). Each view is made by the
single-view ImageProcessor: the crops by the same steps (pad-to-square, resize, centre crop) at k times the sizes,
the result cut into k x k tiles row-major, so a crop sees a k-th of the image at the encoder's resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ConfigError
from vlbridge.vision.loading import ImageSource
from vlbridge.vision.processor import ImageProcessor


class CropsImageProcessor:
    """Images -> pixel_values (N, k^2 + 1, 3, H, W): k x k crops row-major, then the whole image."""

    def __init__(self, config: ImageProcessorConfig, grid: int) -> None:
        if grid < 2:
            raise ConfigError(f"crops per side must be >= 2 for high-resolution views, got {grid}")
        if config.image_grid_pinpoints is not None:
            raise ConfigError(
                "image_processor.image_grid_pinpoints (AnyRes) and the mini connector's hd_grid both tile the image; "
                "use one of them"
            )
        self.config = config
        self.grid = grid
        self.whole = ImageProcessor(config)
        large = dataclasses.replace(config, size=config.size * grid, crop_size=config.crop_size * grid)
        self.large = ImageProcessor(large)

    def views_of(self, image: ImageSource) -> torch.Tensor:
        """One image -> its views (k^2 + 1, 3, H, W)."""
        whole = self.whole.preprocess_one(image)  # (3, H, W)
        large = self.large.preprocess_one(image)  # (3, k H, k W)
        k, (_, h, w) = self.grid, whole.shape
        if large.shape[1:] != (k * h, k * w):
            raise ConfigError(
                "high-resolution crops need fixed-size preprocessing (enable do_center_crop or use resize_mode "
                f"exact); got a {tuple(large.shape[1:])} image for {k} x {k} crops of {h} x {w}"
            )
        crops = large.reshape(3, k, h, k, w).permute(1, 3, 0, 2, 4).reshape(k * k, 3, h, w)  # (k^2, 3, H, W)
        return torch.cat([crops, whole[None]])

    def __call__(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """A batch (N, k^2 + 1, 3, H, W) float32."""
        side = self.config.crop_size
        if not images:
            return torch.empty(0, self.grid**2 + 1, 3, side, side)
        return torch.stack([self.views_of(image) for image in images])
