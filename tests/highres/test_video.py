"""Video decoding and fps sampling (highres/video.py): the midpoint rule, frames decoded from real MP4 files written
with PyAV, the max_frames cap, and a typed error naming the file for every unreadable video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from video_files import frame_index, write_mp4
from vlbridge.errors import ConfigError, VideoError
from vlbridge.highres.video import count_frames, read_video, sample_indices, video_frames

pytest.importorskip("av")


@pytest.mark.parametrize(
    ("n_frames", "rate", "fps", "max_frames", "expected"),
    [
        (12, 4, 1.0, None, [2, 6, 10]),  # D = 3 s: midpoints 0.5, 1.5, 2.5 s
        (12, 4, 2.0, None, [1, 3, 5, 7, 9, 11]),  # midpoints 0.25, 0.75, ... s
        (12, 4, 0.5, None, [4, 10]),  # segments [0, 2] and [2, 3]: midpoints 1 and 2.5 s
        (10, 4, 1.0, None, [2, 6, 9]),  # D = 2.5 s: the last segment [2, 2.5] has its midpoint at 2.25 s
        (12, 4, 2.0, 4, [1, 4, 7, 10]),  # capped: 4 segments of 0.75 s over the whole video
        (6, 2, 4.0, None, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),  # above the native rate: frames repeat
        (1, 4, 1.0, None, [0]),  # a one-frame video gives its frame
    ],
)
def test_sample_indices_take_the_frame_shown_at_each_segment_midpoint(
    n_frames: int, rate: int, fps: float, max_frames: int | None, expected: list[int]
) -> None:
    assert sample_indices(n_frames, rate, fps, max_frames) == expected


@pytest.mark.parametrize(
    ("n_frames", "rate", "fps", "max_frames"),
    [(12, 4, 1.0, None), (12, 4, 2.0, 4), (10, 4, 3.0, None), (5, 1, 0.4, None)],
)
def test_decoded_frames_are_the_sampled_ones(
    tmp_path: Path, n_frames: int, rate: int, fps: float, max_frames: int | None
) -> None:
    path = write_mp4(tmp_path / "clip.mp4", n_frames, rate)
    frames = read_video(path, fps, max_frames)
    assert [frame_index(f) for f in frames] == sample_indices(n_frames, rate, fps, max_frames)
    assert all(f.size == (32, 32) and f.mode == "RGB" for f in frames)
    assert count_frames(path, fps, max_frames) == len(frames)  # what datasets size a video's tokens by


def test_decoded_frames_given_directly_are_capped_by_the_same_rule() -> None:
    array = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(10)])
    assert [int(np.asarray(f)[0, 0, 0]) for f in video_frames(array, max_frames=4)] == [1, 3, 6, 8]
    images = [PIL.Image.fromarray(a) for a in array[:3]]
    assert len(video_frames(images, max_frames=4)) == 3


def _zero_frame_mp4(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
    return path


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: p, "no video file"),
        (lambda p: (p.write_bytes(b""), p)[1], "cannot be decoded|no video"),
        (lambda p: (p.write_text("just some text, not a video\n" * 20), p)[1], "cannot be decoded|no video"),
        (lambda p: (p.write_bytes(np.random.default_rng(0).bytes(4096)), p)[1], "cannot be decoded|no video"),
        (lambda p: (p.write_bytes(write_mp4(p, 12, 4).read_bytes()[:600]), p)[1], "cannot be decoded|no (video|frame)"),
        (_zero_frame_mp4, "no frames|no video|cannot be decoded"),
    ],
    ids=["missing", "empty", "text", "random-bytes", "truncated", "zero-frames"],
)
def test_unreadable_videos_raise_a_typed_error_naming_the_file(tmp_path: Path, make, pattern: str) -> None:
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(VideoError, match=pattern) as info:
        read_video(path, 1.0)
    assert str(path) in str(info.value) and "pass a readable video file" in str(info.value)


@pytest.mark.parametrize(("fps", "max_frames"), [(0.0, None), (float("nan"), None), (1.0, 0)])
def test_bad_sampling_settings_are_config_errors(fps: float, max_frames: int | None) -> None:
    with pytest.raises(ConfigError):
        sample_indices(10, 4, fps, max_frames)


@pytest.mark.parametrize("bad", [[], np.zeros((2, 8, 8), np.uint8), np.zeros((0, 8, 8, 3), np.uint8), ["x.png"]])
def test_bad_decoded_frames_are_refused(bad: object) -> None:
    with pytest.raises(VideoError):
        video_frames(bad)  # type: ignore[arg-type]
