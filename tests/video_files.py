"""Tiny MP4 files written with PyAV for the video tests: frame i is a flat grey of level `level(i)`, so a decoded
frame's mean says which frame it is. Imported by name (tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def level(i: int) -> int:
    """The grey level of frame i: 16 levels 16 apart, far enough apart to survive H.264 at 32 x 32."""
    return 8 + 16 * (i % 16)


def write_mp4(path: Path, n_frames: int, rate: int, size: int = 32) -> Path:
    """An H.264 MP4 of `n_frames` size x size frames at `rate` fps; frame i is grey `level(i)`."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), level(i), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def frame_index(image: object) -> int:
    """Which frame (mod 16) a decoded frame is, from its mean grey level."""
    return round((float(np.asarray(image).mean()) - 8) / 16)
