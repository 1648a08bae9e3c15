"""The multimodal Processor: prompts with `<image>` placeholders + images -> input_ids, attention_mask, pixel_values.

As transformers' LlavaProcessor does (Liu et al., "Visual Instruction Tuning", 2023), each `<image>` is expanded to
as many image-token copies as that image takes in the language model's sequence before tokenizing, so sequence
positions line up with the logits and the model splices visual tokens in place. Without an image processor the
Processor serves a text-only deployment: images are refused, and prompt placeholders refused or stripped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch

from vlbridge.atomic import write_text
from vlbridge.errors import (
    ConfigError,
    ContextOverflowError,
    ModalityError,
    PlaceholderError,
    PromptError,
    VideoError,
)
from vlbridge.highres.anyres import AnyResImageProcessor
from vlbridge.highres.crops import CropsImageProcessor
from vlbridge.highres.video import VideoSource, video_frames
from vlbridge.lm import templates
from vlbridge.lm.tokenizer import Tokenizer, check_text
from vlbridge.vision.processor import ImageProcessor

if TYPE_CHECKING:
    from vlbridge.model.vlm import VisionLanguageModel

TEXT_ONLY_IMAGES = ("refuse", "strip")


class Processor:
    """Tokenizer + image preprocessing + `<image>` expansion: builds the model's inputs from prompts and images."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor: ImageProcessor | AnyResImageProcessor | CropsImageProcessor | None,
        *,
        image_token: str = "<image>",
        image_token_id: int,
        tokens_per_image: Callable[[int, int], int],
        max_length: int | None = None,
        template: str | None = None,
        text_only_images: str = "refuse",
        tokens_per_video: Callable[[int, int, int], int] | None = None,
        video_token: str = "<video>",
        video_fps: float = 1.0,
        video_max_frames: int | None = 32,
    ) -> None:
        """`image_processor` None: text-only; `tokens_per_image(height, width)` counts one image: preprocessed, or for
        AnyRes (an AnyResImageProcessor) as given (its image_sizes); `tokens_per_video(frames, height, width)` counts
        one video (None: videos are refused), sampled at `video_fps` up to `video_max_frames` unless a call says."""
        if text_only_images not in TEXT_ONLY_IMAGES:
            raise ConfigError(f"text_only_images is {text_only_images!r}; choose one of {', '.join(TEXT_ONLY_IMAGES)}")
        if template is not None:
            templates.TEMPLATES.get(template)  # an unknown name fails now, listing the known ones
        found = tokenizer.token_to_id(image_token)
        if image_processor is not None and found != image_token_id:
            raise ConfigError(
                f"the tokenizer maps the image token {image_token!r} to id {found}, but the model expects "
                f"{image_token_id}; add it with tokenizer.add_special_tokens([{image_token!r}]) and set image_token_id "
                "to the id it gets (resizing the LM's embeddings)"
            )
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.template = template
        self.text_only_images = text_only_images
        self.tokens_per_video = tokens_per_video
        self.video_token = video_token
        self.video_fps = video_fps
        self.video_max_frames = video_max_frames

    @property
    def has_vision(self) -> bool:
        """Whether this processor accepts images."""
        return self.image_processor is not None

    def _images_per_prompt(self, prompts: list[str], images: Any, token: str | None = None) -> list[list[Any]]:
        """Images (or videos, with `token` their placeholder) grouped per prompt: a list of lists as given, a flat list
        dealt out by placeholder count."""
        token = token or self.image_token
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        counts = [p.count(token) for p in prompts]
        if images and all(isinstance(group, (list, tuple)) for group in images):
            if len(images) != len(prompts):
                raise PlaceholderError(
                    f"got {len(images)} image lists for {len(prompts)} prompts; pass one list per prompt"
                )
            groups = [list(group) for group in images]
        else:
            if len(images) != sum(counts):
                per_prompt = ", ".join(f"prompt {i}: {c}" for i, c in enumerate(counts))
                raise PlaceholderError(
                    f"the prompts hold {sum(counts)} {token} placeholder(s) ({per_prompt}) but "
                    f"{len(images)} image(s) were given; put one {token} in the text per image"
                )
            starts = [sum(counts[:i]) for i in range(len(counts))]
            groups = [list(images[s : s + c]) for s, c in zip(starts, counts, strict=True)]
        for i, (count, group) in enumerate(zip(counts, groups, strict=True)):
            if count != len(group):
                raise PlaceholderError(
                    f"prompt {i} holds {count} {token} placeholder(s) but {len(group)} image(s) were "
                    f"given for it; put one {token} in the text per image"
                )
        return groups

    def _text_only(self, prompts: list[str], images: Any) -> list[str]:
        """Refuse images; refuse placeholders, or strip them (with the newline LLaVA puts after one), as configured."""
        flat = images if isinstance(images, (list, tuple)) else [images]
        if images is not None and any(not isinstance(g, (list, tuple)) or g for g in flat):
            raise ModalityError(
                "this deployment is text-only (no vision plug-in loaded) and cannot take images; "
                "send the request without images, or load the model with vision=True"
            )
        with_placeholder = [i for i, p in enumerate(prompts) if self.image_token in p]
        if with_placeholder and self.text_only_images == "refuse":
            raise ModalityError(
                f"prompt(s) {with_placeholder} contain {self.image_token} but this deployment is text-only; "
                "remove the placeholder, load the model with vision=True, or set text_only_images='strip'"
            )
        return [p.replace(self.image_token + "\n", "").replace(self.image_token, "") for p in prompts]

    def __call__(
        self,
        text: str | list[str],
        images: Any = None,
        return_tensors: str = "pt",
        padding_side: str = "left",
        videos: Any = None,
        fps: float | None = None,
        max_frames: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (B, T), padded; pixel_values (N_images, 3, H, W) in prompt order if images;
        for AnyRes pixel_values (N_images, max_views, 3, H, W) and image_sizes (N_images, 2) as (height, width); for
        LLaVA-Mini HD pixel_values (N_images, k^2 + 1, 3, H, W), the crops then the whole image.

        `images`: None, a list of PIL images/paths for one prompt (or dealt out in order over several prompts by
        their placeholder counts), or a list of lists, one per prompt.
        `videos`: as `images`, each a file path or decoded frames, one per `<video>`; frames are sampled at `fps`
        (default `video_fps`) up to `max_frames` (default `video_max_frames`), and the output holds every video's
        frames as pixel_values (N_frames, 3, H, W) with video_frames (N_videos,) their counts. A call takes images or
        videos, not both.
        """
        if return_tensors != "pt":
            raise ConfigError(f"return_tensors={return_tensors!r} is not supported; use 'pt'")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side={padding_side!r}; choose 'left' or 'right'")
        prompts = self._prompts(text)
        out: dict[str, torch.Tensor] = {}
        n_images, visual = [0] * len(prompts), [0] * len(prompts)
        if videos is None and any(self.video_token in p for p in prompts):
            raise PlaceholderError(f"the prompt holds {self.video_token} but no videos were given; pass videos=[...]")
        if self.image_processor is None:
            prompts = self._text_only(prompts, images if videos is None else videos)
        elif videos is not None:
            if images is not None:
                raise PlaceholderError("a call takes images or videos, not both; send the video and images apart")
            out, prompts, n_images, visual = self._videos(prompts, videos, fps, max_frames)
        else:
            groups = self._images_per_prompt(prompts, images)
            n_images = [len(group) for group in groups]
            flat = [image for group in groups for image in group]
            if flat and isinstance(self.image_processor, AnyResImageProcessor):
                out["pixel_values"], out["image_sizes"] = self.image_processor(flat)  # (N, V, 3, H, W), (N, 2)
                counts = [self.tokens_per_image(h, w) for h, w in out["image_sizes"].tolist()]
                prompts, visual = self._expand(prompts, n_images, counts)
            elif flat:
                pixel_values = self.image_processor(flat)  # (N, 3, H, W); HD crops: (N, k^2 + 1, 3, H, W)
                counts = [self.tokens_per_image(*p.shape[-2:]) for p in pixel_values]
                prompts, visual = self._expand(prompts, n_images, counts)
                out["pixel_values"] = pixel_values
        ids = self.tokenizer.encode_batch(prompts)
        self._check_length(ids, n_images, visual)
        out.update(self._pad(ids, padding_side))
        return out

    def _videos(
        self, prompts: list[str], videos: Any, fps: float | None, max_frames: int | None
    ) -> tuple[dict[str, torch.Tensor], list[str], list[int], list[int]]:
        """Decode and preprocess each prompt's videos; expand each `<video>` to its tokens."""
        if self.tokens_per_video is None:
            raise ModalityError("this processor's model takes no video input; load a model with a vision plug-in")
        groups = self._images_per_prompt(prompts, _frames_as_arrays(videos), self.video_token)
        pixels = [self.video_pixels(v, fps, max_frames) for group in groups for v in group]  # (F, 3, H, W)
        counts = [self.tokens_per_video(len(p), *p.shape[-2:]) for p in pixels]
        n_videos = [len(group) for group in groups]
        expanded, visual = self._expand(prompts, n_videos, counts, self.video_token)
        out = {
            "pixel_values": torch.cat(pixels) if pixels else torch.empty(0),
            "video_frames": torch.tensor([len(p) for p in pixels], dtype=torch.long),
        }
        return out, expanded, n_videos, visual

    def video_pixels(self, video: VideoSource, fps: float | None = None, max_frames: int | None = None) -> torch.Tensor:
        """One video's frames, sampled at `fps` (default `video_fps`) up to `max_frames` (default `video_max_frames`)
        and preprocessed one view each, even with AnyRes: (F, 3, H, W). Public for training, which reads a record's
        video as a call here does."""
        if self.image_processor is None:
            raise ModalityError("this processor is text-only and cannot take videos; load the model with vision=True")
        frame_processor = ImageProcessor(self.image_processor.config)
        cap = self.video_max_frames if max_frames is None else max_frames
        return frame_processor(video_frames(video, self.video_fps if fps is None else fps, cap))

    @staticmethod
    def _prompts(text: Any) -> list[str]:
        """`text` as a list of prompts, each checked to be valid Unicode text before `<image>` expansion changes it,
        so a PromptError's position counts in the text as the user wrote it."""
        if isinstance(text, str):
            prompts = [text]
        elif isinstance(text, (list, tuple)):
            prompts = list(text)
        else:
            raise PromptError(f"text is a {type(text).__name__}; pass a str or a list of str (one per prompt)")
        for i, prompt in enumerate(prompts):
            check_text(prompt, f"prompt {i}")
        return prompts

    def _expand(
        self, prompts: list[str], n_images: list[int], counts: list[int], placeholder: str | None = None
    ) -> tuple[list[str], list[int]]:
        """Replace the k-th placeholder (`<image>`, or `placeholder`) by counts[k] image tokens; returns prompts and
        visual tokens per prompt."""
        expanded, visual, k = [], [], 0
        for prompt, n in zip(prompts, n_images, strict=True):
            parts = prompt.split(placeholder or self.image_token)  # n + 1 pieces
            text = parts[0]
            for j in range(n):
                text += self.image_token * counts[k + j] + parts[j + 1]
            expanded.append(text)
            visual.append(sum(counts[k : k + n]))
            k += n
        return expanded, visual

    def expand_images(self, text: str, counts: Sequence[int], placeholder: str | None = None) -> str:
        """`text` with its k-th `<image>` (or `placeholder`, e.g. the video token) replaced by counts[k] image tokens:
        the expansion `__call__` applies.

        Public for the training pipeline, which expands each template piece itself to keep label boundaries.
        """
        marker = placeholder or self.image_token
        n = text.count(marker)
        if n != len(counts):
            raise PlaceholderError(
                f"the text holds {n} {marker} placeholder(s) but {len(counts)} token count(s) were given; give one "
                f"count per {marker}"
            )
        return self._expand([text], [n], list(counts), marker)[0][0]

    def _check_length(self, ids: list[list[int]], n_images: list[int], visual: list[int]) -> None:
        """ContextOverflowError, counting text and visual tokens apart, when a prompt exceeds max_length."""
        if self.max_length is None:
            return
        for i, (seq, n, vis) in enumerate(zip(ids, n_images, visual, strict=True)):
            if len(seq) > self.max_length:
                raise ContextOverflowError(
                    f"prompt {i} needs {len(seq)} tokens ({len(seq) - vis} text + {vis} visual from {n} image(s)) "
                    f"but the context holds {self.max_length}; shorten the text, send fewer images, or use a "
                    "connector with fewer visual tokens per image (e.g. pool, perceiver or mini)"
                )

    def _pad(self, ids: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        """(B, T) input_ids and attention_mask, padded on `side` with the pad id (else eos, else 0)."""
        pad = next((i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0)
        length = max((len(seq) for seq in ids), default=0)
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, seq in enumerate(ids):
            cols = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
            input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for `messages`: the built-in `template` if set, else the tokenizer's own chat template."""
        if self.template is not None:
            return templates.render(self.template, messages, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of one sequence of ids."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        """Text of each row of `ids` (B, T)."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]

    def save_pretrained(self, path: str | Path) -> None:
        """Tokenizer files, and preprocessor_config.json when this processor takes images; no weights."""
        from vlbridge.vision.hf_keys import image_processor_config_to_hf

        path = Path(path)
        self.tokenizer.save(path)
        if self.image_processor is not None:
            config = self.image_processor.config
            family = "siglip" if config.resize_mode == "exact" else "clip"
            hf = image_processor_config_to_hf(config, family)
            write_text(path / "preprocessor_config.json", json.dumps(hf, indent=2) + "\n")


def _frames_as_arrays(videos: Any) -> Any:
    """`videos` with every video given as a list of PIL frames turned into one array (F, H, W, 3), so such a list is
    never taken for a prompt's list of videos."""

    def is_frames(item: Any) -> bool:
        return isinstance(item, (list, tuple)) and bool(item) and all(isinstance(f, PIL.Image.Image) for f in item)

    def convert(item: Any) -> Any:
        if not is_frames(item):
            return item
        arrays = [np.asarray(frame.convert("RGB")) for frame in item]
        if len({a.shape for a in arrays}) > 1:
            raise VideoError("a video's frames must all have one size; resize them, or pass the video file")
        return np.stack(arrays)  # (F, H, W, 3)

    if not isinstance(videos, (list, tuple)) or is_frames(videos):
        return [convert(videos)]
    return [
        [convert(v) for v in item] if isinstance(item, (list, tuple)) and not is_frames(item) else convert(item)
        for item in videos
    ]


def processor_for(model: VisionLanguageModel, tokenizer: Tokenizer) -> Processor:
    """A Processor whose `<image>` expansion and preprocessing match `model` (text-only when it has no vision)."""
    config = model.config
    image_processor: ImageProcessor | AnyResImageProcessor | CropsImageProcessor | None = None
    if model.has_vision:
        assert model.connector is not None, "a model with vision has a connector"
        crops = model.connector.crop_grid
        if crops > 1:
            image_processor = CropsImageProcessor(config.image_processor, crops)
        elif config.image_processor.image_grid_pinpoints is not None:
            image_processor = AnyResImageProcessor(config.image_processor)
        else:
            image_processor = ImageProcessor(config.image_processor)
    return Processor(
        tokenizer,
        image_processor,
        image_token=config.image_token,
        image_token_id=config.image_token_id,
        tokens_per_image=model.tokens_per_image,
        max_length=config.language_model.max_position_embeddings,
        template=config.template,
        text_only_images=config.text_only_images,
        tokens_per_video=model.tokens_per_video if model.has_vision else None,
    )
