"""LLaVA's pad-to-square on a worked example, and batch handling."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ImageError
from vlbridge.vision import ImageProcessor
from vlbridge.vision.processor import pad_to_square


def test_pad_to_square_worked_example():
    """A 5x2 red strip on a mean-coloured 5x5 square: pasted at ((5-5)//2, (5-2)//2) = (0, 1): rows 1 and 2."""
    mean = [0.5, 0.25, 0.0]
    fill = tuple(int(m * 255) for m in mean)
    assert fill == (127, 63, 0)
    padded = np.asarray(pad_to_square(PIL.Image.new("RGB", (5, 2), (255, 0, 0)), fill))
    expected = np.zeros((5, 5, 3), dtype=np.uint8)
    expected[:] = (127, 63, 0)
    expected[1:3] = (255, 0, 0)
    np.testing.assert_array_equal(padded, expected)
    # portrait 2x5: columns (5-2)//2 = 1 and 2 hold the image
    padded = np.asarray(pad_to_square(PIL.Image.new("RGB", (2, 5), (255, 0, 0)), fill))
    np.testing.assert_array_equal(padded[:, 1:3], np.full((5, 2, 3), (255, 0, 0), dtype=np.uint8))
    assert (padded[:, [0, 3, 4]] == (127, 63, 0)).all()

    cfg = ImageProcessorConfig(
        resize_mode="exact", crop_size=5, resample=0, image_mean=mean, image_std=[0.5, 0.5, 0.5], pad_to_square=True
    )
    pixels = ImageProcessor(cfg).preprocess_one(PIL.Image.new("RGB", (5, 2), (255, 0, 0)))
    assert pixels.shape == (3, 5, 5)
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([(127 / 255 - 0.5) / 0.5, (63 / 255 - 0.25) / 0.5, 0.0]))
    torch.testing.assert_close(pixels[:, 1, 0], torch.tensor([1.0, -0.5, 0.0]))


def test_batch_shapes_and_paths(tmp_path):
    path = tmp_path / "a.jpg"
    PIL.Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    processor = ImageProcessor(ImageProcessorConfig(size=16, crop_size=16))
    batch = processor([PIL.Image.new("RGB", (17, 33)), path])
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert processor([]).shape == (0, 3, 16, 16)
    no_crop = ImageProcessor(ImageProcessorConfig(size=16, do_center_crop=False))
    assert no_crop.preprocess_one(path).shape == (3, 16, 21)  # int(16 * 40 / 30) = 21
    with pytest.raises(ImageError, match="different sizes"):
        no_crop([PIL.Image.new("RGB", (17, 33)), path])
