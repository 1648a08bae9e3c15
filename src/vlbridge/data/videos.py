"""Video records in supervised training data: how many tokens each video takes, and its frames when a batch is built.

A LLaVA-NeXT-Video / LLaVA-Video style record (`"video": "clip.mp4"`, `<video>` in a human turn; Zhang et al., 2024)
is read as the processor reads a video at inference (`Processor.video_pixels`): frames sampled at the stage's fps at
segment midpoints, capped at its max_frames, each preprocessed as one view. The token count is needed when the
dataset is built (to place labels and truncate), before any frame is decoded, so it comes from the container's header
(`highres.video.count_frames`); the frames are decoded only when the sample is read. The model encodes them in
chunks of `video_chunk_frames`, as it does for a prompt. Every unreadable video is a DataError naming the record, the
data file, its line and the video file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlbridge.data.llava_json import Record
from vlbridge.errors import ConfigError, DataError, ModalityError, VideoError
from vlbridge.highres.video import count_frames
from vlbridge.model.processor import Processor


@dataclass(frozen=True)
class VideoSampling:
    """How a stage samples its records' videos: frames per second, and the most frames a video keeps (None: all)."""

    fps: float = 1.0
    max_frames: int | None = 32


def _failed(record: Record, err: VideoError) -> DataError:
    return DataError(f"record {record.id!r}: {err}", record.source, record.line)


def check_media(records: list[Record], processor: Processor, augmenting: bool) -> bool:
    """Whether `records` hold videos; DataError when they mix image and video records (the model takes images or
    videos in one forward pass, so a batch could not hold both), ConfigError when they cannot be read as asked."""
    with_videos = [r for r in records if r.videos]
    if not with_videos:
        return False
    with_images = next((r for r in records if r.images), None)
    if with_images is not None:
        raise DataError(
            f"the data holds image records (e.g. {with_images.id!r}) and video records (e.g. {with_videos[0].id!r}); "
            "a batch takes images or videos, not both: put them in separate files and train them as separate stages",
            with_videos[0].source,
        )
    if processor.tokens_per_video is None:
        raise ModalityError("video records need a model with a vision plug-in; load the model with vision")
    if augmenting:
        raise ConfigError(
            "augment transforms images one at a time and would change every frame of a video differently; turn the "
            "stage's augment off for video data"
        )
    return True


def video_tokens(record: Record, root: Path, processor: Processor, sampling: VideoSampling, side: int) -> list[int]:
    """The tokens each of the record's videos takes, from the frames it will sample (nothing decoded)."""
    assert processor.tokens_per_video is not None, "check_media refuses videos without a video-taking model"
    try:
        frames = [count_frames(root / path, sampling.fps, sampling.max_frames) for path in record.videos]
    except VideoError as err:
        raise _failed(record, err) from None
    return [processor.tokens_per_video(n, side, side) for n in frames]


def video_pixels(
    record: Record, root: Path, processor: Processor, sampling: VideoSampling
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of the record's videos, in order, (N_frames, 3, H, W), and each video's frame count (N_videos,)."""
    try:
        pixels = [processor.video_pixels(root / path, sampling.fps, sampling.max_frames) for path in record.videos]
    except VideoError as err:
        raise _failed(record, err) from None
    return torch.cat(pixels), torch.tensor([len(p) for p in pixels], dtype=torch.long)
