"""Training-image augmentation for a recipe stage: random resized crop, small rotation, colour jitter (Pillow).

LLaVA-NeXT's data recipe names augmentation beside filtering and deduplication; the three transforms are the usual
ones (Szegedy et al., 2015, for the resized crop; Krizhevsky et al., 2012, for colour jitter), written with Pillow's
own operations (`Image.resize(box=...)`, `Image.rotate`, `ImageEnhance`), no torchvision.

Deterministic: every draw comes from a NumPy generator seeded by (options.seed, sample index, epoch, image slot), so
a sample looks the same whenever it is read in the same epoch (a resumed run, a worker process) and different in the
next epoch. Only the stage datasets that train on images take an `Augmenter`; evaluation reads images through the
processor alone and never sees one. All transforms are off by default (0). The synthetic world names colours and
places: jitter and crops strong enough to change a colour or cut an object out would teach wrong answers there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageEnhance

from vlbridge.config import ImageProcessorConfig, bounded
from vlbridge.vision.loading import ImageSource, load_image

ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)  # Color: saturation


@dataclass(frozen=True)
class AugmentOptions:
    """A stage's `augment:` section; every transform is off at 0."""

    crop: float = field(default=0.0, metadata=bounded(0, 1, high_open=True))  # most area a resized crop cuts away
    rotation: float = field(default=0.0, metadata=bounded(0, 180))  # largest rotation, degrees either way
    color_jitter: float = field(default=0.0, metadata=bounded(0, 1, high_open=True))  # brightness, contrast and
    #                                                   saturation factors drawn from [1 - j, 1 + j]
    seed: int = 0

    @property
    def active(self) -> bool:
        """Whether any transform is on."""
        return self.crop > 0 or self.rotation > 0 or self.color_jitter > 0


class Augmenter:
    """Applies `AugmentOptions` to PIL images, seeded per (sample, epoch, slot); `set_epoch` moves to a new epoch."""

    def __init__(self, options: AugmentOptions) -> None:
        self.options = options
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next images for `epoch` (the trainer calls this before each pass over the data)."""
        self.epoch = epoch

    def __call__(self, image: PIL.Image.Image, index: int, slot: int = 0) -> PIL.Image.Image:
        """`image` (RGB) augmented for sample `index`'s image `slot` in the current epoch, same size as given."""
        rng = np.random.default_rng([self.options.seed, index, self.epoch, slot])
        opts = self.options
        if opts.crop > 0:
            image = _resized_crop(image, rng, opts.crop)
        if opts.rotation > 0:
            angle = float(rng.uniform(-opts.rotation, opts.rotation))
            fill = tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(0))  # the image's mean colour
            image = image.rotate(angle, resample=PIL.Image.BILINEAR, fillcolor=fill)
        if opts.color_jitter > 0:
            low, high = 1 - opts.color_jitter, 1 + opts.color_jitter
            for i in rng.permutation(len(ENHANCERS)):  # a random order, as torchvision's ColorJitter
                image = ENHANCERS[i](image).enhance(float(rng.uniform(low, high)))
        return image


class EpochAugmented:
    """A dataset that may augment its images: `set_epoch` is what the trainer calls before each pass."""

    augment: Augmenter | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch the augmenter draws for (nothing without one)."""
        if self.augment is not None:
            self.augment.set_epoch(epoch)


def sources(
    paths: Sequence[Path], augment: Augmenter | None, config: ImageProcessorConfig, index: int
) -> list[ImageSource]:
    """What a stage dataset hands its image processor for sample `index`: the paths as they are, or, with an
    augmenter, each image read (within `config`'s limits; ImageError otherwise) and augmented."""
    if augment is None:
        return list(paths)
    return [augment(load_image(path, config), index, slot) for slot, path in enumerate(paths)]


def _resized_crop(image: PIL.Image.Image, rng: np.random.Generator, cut: float) -> PIL.Image.Image:
    """A box of [1 - cut, 1] of the area with aspect ratio in [3/4, 4/3] (log-uniform), resized back to the image's
    size; a box that would not fit is shrunk to fit."""
    width, height = image.size
    area = width * height * rng.uniform(1 - cut, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, max(1, round(math.sqrt(area * ratio))))
    h = min(height, max(1, round(math.sqrt(area / ratio))))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return image.resize((width, height), resample=PIL.Image.BICUBIC, box=(left, top, left + w, top + h))
