"""Video input: decode a file with PyAV and sample frames at a requested rate, at segment midpoints.

LLaVA-NeXT-Video (Zhang et al., 2024) and LLaVA-Mini (Zhang et al., 2025) read a video as frames sampled at a fixed
rate (1 fps by default), capped at a maximum count. The rule here, for a video of duration D seconds (N frames at
r frames per second, D = N / r) sampled at f frames per second:

- n = ceil(D * f) segments of 1 / f seconds each (the last one ends at D and may be shorter);
- when n exceeds `max_frames`, n = max_frames segments of D / n seconds spread uniformly over the whole video;
- the frame taken for a segment is the one shown at the segment's midpoint time t: index floor(t * r), the last
  decoded frame whose timestamp i / r is at or before t (clamped to N - 1).

Decoding streams through the file once and keeps only the selected frames, so memory holds at most n frames
whatever the video's length. PyAV (the `video` extra) is imported only when a file is decoded. Every failure
(missing, corrupt, empty, no video stream, zero frames, no frame rate) is a VideoError naming the file and the fix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from vlbridge.errors import ConfigError, VideoError

VideoSource = str | Path | Sequence[PIL.Image.Image] | np.ndarray
"""A video file path, or frames already decoded: PIL images, or a uint8 array (F, H, W, 3)."""


def sample_times(duration: float, fps: float, max_frames: int | None = None) -> list[float]:
    """Midpoint times (seconds) of the sampling segments of a `duration`-second video at `fps`, capped as above."""
    if fps <= 0 or not math.isfinite(fps):
        raise ConfigError(f"the video sampling rate must be a positive number of frames per second, got {fps!r}")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames must be at least 1 (or None for no cap), got {max_frames!r}")
    n = max(1, math.ceil(duration * fps - 1e-9))
    if max_frames is not None and n > max_frames:
        step = duration / max_frames
        return [(k + 0.5) * step for k in range(max_frames)]
    return [(k / fps + min((k + 1) / fps, duration)) / 2 for k in range(n)]


def sample_indices(n_frames: int, native_fps: float, fps: float, max_frames: int | None = None) -> list[int]:
    """Indices of the frames sampled from a video of `n_frames` frames at `native_fps` (see the module docstring);
    a frame repeats when `fps` exceeds the video's own rate."""
    times = sample_times(n_frames / native_fps, fps, max_frames)
    return [min(n_frames - 1, math.floor(t * native_fps + 1e-9)) for t in times]


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ConfigError("video input needs PyAV: install it with pip install 'vlbridge[video]'") from None
    return av


def read_video(path: str | Path, fps: float = 1.0, max_frames: int | None = None) -> list[PIL.Image.Image]:
    """The frames of the video file at `path` sampled at `fps` (at most `max_frames`), as RGB PIL images in order."""
    return _open_video(path, fps, max_frames, decode=True)


def count_frames(path: str | Path, fps: float = 1.0, max_frames: int | None = None) -> int:
    """How many frames `read_video(path, fps, max_frames)` returns, from the container's header and packets alone
    (nothing decoded): what a dataset needs to size a video's tokens before it reads the frames."""
    return _open_video(path, fps, max_frames, decode=False)


def _open_video(path: str | Path, fps: float, max_frames: int | None, decode: bool) -> Any:
    """The sampled frames (`decode`) or their count, with every failure a VideoError naming the file."""
    av = _import_av()
    path = Path(path)
    fix = "pass a readable video file (e.g. MP4 with H.264) or decoded frames"
    if not path.is_file():
        raise VideoError(f"no video file here; {fix}", path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"the file has no video stream; {fix}", path)
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if rate <= 0:
                raise VideoError(f"the video stream has no frame rate, so frames cannot be timed; {fix}", path)
            n_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            if n_frames < 1:
                raise VideoError(f"the video has no frames; {fix}", path)
            wanted = Counter(sample_indices(n_frames, rate, fps, max_frames))
            if not decode:
                return sum(wanted.values())
            container.seek(0)
            frames = _decode_selected(container, stream, wanted)
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"the file cannot be decoded as a video ({err}); {fix}", path) from None
    if not frames:
        raise VideoError(f"no frame could be decoded from the video; {fix}", path)
    return frames


def _decode_selected(container: Any, stream: Any, wanted: Counter[int]) -> list[PIL.Image.Image]:
    """Stream-decode `stream`, keeping frame i `wanted[i]` times, stopping after the last wanted index; if the stream
    ends early (its header over-counted), the last decoded frame stands in for the missing ones."""
    last_index = max(wanted)
    total = sum(wanted.values())
    frames: list[PIL.Image.Image] = []
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            frames += [frame.to_image().convert("RGB")] * wanted[i]
        if i >= last_index:
            break
    return frames + frames[-1:] * (total - len(frames)) if frames else frames


def video_frames(source: VideoSource, fps: float = 1.0, max_frames: int | None = None) -> list[PIL.Image.Image]:
    """Frames of one video: decoded and sampled from a file, or decoded frames as given (capped at `max_frames`
    by the same uniform midpoint rule, with each frame lasting one time unit)."""
    if isinstance(source, (str, Path)):
        return read_video(source, fps, max_frames)
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8 or not len(source):
            raise VideoError(
                f"a video given as an array must be uint8 (frames, height, width, 3) with at least one frame, got "
                f"{source.dtype} {tuple(source.shape)}; convert it, or pass the file path"
            )
        frames = [PIL.Image.fromarray(frame) for frame in source]
    else:
        frames = list(source)
        if not frames or not all(isinstance(f, PIL.Image.Image) for f in frames):
            raise VideoError("a video given as frames must be a non-empty list of PIL images; or pass the file path")
        frames = [f.convert("RGB") for f in frames]
    if max_frames is not None and len(frames) > max_frames:
        frames = [frames[i] for i in sample_indices(len(frames), 1.0, 1.0, max_frames)]
    return frames
