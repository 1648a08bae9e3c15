"""Oracle tests: our ImageProcessor equals transformers' PIL CLIP / SigLIP / llava image processors pixel for pixel."""

from __future__ import annotations

import dataclasses

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPImageProcessorPil, LlavaImageProcessorPil, SiglipImageProcessorPil

from vlbridge.config import ImageProcessorConfig
from vlbridge.vision import ImageProcessor, image_processor_config_from_hf, image_processor_config_to_hf

TOL = 1e-5
HF_CLASSES = {
    "CLIPImageProcessor": CLIPImageProcessorPil,
    "SiglipImageProcessor": SiglipImageProcessorPil,
    "LlavaImageProcessor": LlavaImageProcessorPil,
}
# preprocessor_config.json as shipped with llava-1.5 (CLIP-L/336) and SigLIP-so400m/384
CLIP_PP = {
    "image_processor_type": "CLIPImageProcessor",
    "size": {"shortest_edge": 336},
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
}
SIGLIP_PP = {
    "image_processor_type": "SiglipImageProcessor",
    "size": {"height": 384, "width": 384},
    "resample": 3,
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def _images() -> list[PIL.Image.Image]:
    """Odd sizes, portrait and landscape, RGB, RGBA (partly transparent), grayscale and a tiny one."""
    rng = np.random.default_rng(0)

    def noise(h: int, w: int, c: int) -> np.ndarray:
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)

    rgba = noise(217, 333, 4)
    rgba[..., 3] = np.where(rng.random((217, 333)) < 0.5, 0, rgba[..., 3])
    return [
        PIL.Image.fromarray(noise(217, 333, 3)),  # landscape 333x217
        PIL.Image.fromarray(noise(333, 217, 3)),  # portrait 217x333
        PIL.Image.fromarray(rgba, mode="RGBA"),
        PIL.Image.fromarray(noise(301, 199, 1)[..., 0], mode="L"),
        PIL.Image.fromarray(noise(9, 14, 3)),  # smaller than the crop: upscaled
    ]


def _hf_pixels(pp: dict, images: list[PIL.Image.Image]) -> torch.Tensor:
    kwargs = {k: v for k, v in pp.items() if k != "image_processor_type"}
    processor = HF_CLASSES[pp["image_processor_type"]](**kwargs)
    return torch.stack([processor(images=[im], return_tensors="pt")["pixel_values"][0] for im in images])


@pytest.mark.parametrize(
    "pp", [CLIP_PP, SIGLIP_PP, {**CLIP_PP, "image_processor_type": "LlavaImageProcessor", "do_pad": True}]
)
def test_pixels_match_hf(pp):
    images = _images()
    ours = ImageProcessor(image_processor_config_from_hf(pp))(images)
    ref = _hf_pixels(pp, images)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "cfg,family",
    [
        (ImageProcessorConfig(size=40, crop_size=32), "clip"),
        (ImageProcessorConfig(size=20, crop_size=32, resample=2), "clip"),  # crop larger than the resize: zero pad
        (ImageProcessorConfig(resize_mode="exact", crop_size=24, image_mean=[0.5] * 3, image_std=[0.5] * 3), "siglip"),
        (ImageProcessorConfig(size=28, crop_size=28, pad_to_square=True), "clip"),
        (ImageProcessorConfig(resize_mode="exact", crop_size=24, pad_to_square=True), "siglip"),
    ],
)
def test_exported_config_reproduces_pixels_in_hf(cfg, family):
    pp = image_processor_config_to_hf(cfg, family)
    images = _images()
    torch.testing.assert_close(ImageProcessor(cfg)(images), _hf_pixels(pp, images), atol=TOL, rtol=0)
    back = image_processor_config_from_hf(pp)
    if cfg.resize_mode == "exact":  # size and do_center_crop are moot when resizing exactly to crop_size
        back = dataclasses.replace(back, size=cfg.size, do_center_crop=cfg.do_center_crop)
    assert back == cfg


def test_config_from_hf_reads_real_files():
    clip = image_processor_config_from_hf(CLIP_PP)
    assert (clip.resize_mode, clip.size, clip.crop_size, clip.do_center_crop) == ("shortest_edge", 336, 336, True)
    siglip = image_processor_config_from_hf(SIGLIP_PP)
    assert (siglip.resize_mode, siglip.crop_size, siglip.do_center_crop) == ("exact", 384, False)
    assert siglip.image_mean == [0.5, 0.5, 0.5] and not siglip.pad_to_square
