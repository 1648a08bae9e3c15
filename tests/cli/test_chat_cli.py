"""`vlbridge chat`: several images in order, a video sampled at an fps, a conversation longer than the context, input
that is not UTF-8."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import vlbridge
from video_files import frame_index, write_mp4
from vlbridge.cli.main import main
from vlbridge.highres.video import read_video
from vlbridge.model.vlm import VisionLanguageModel

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _small_context(checkpoint: Path, tmp_path: Path, tokens: int) -> Path:
    """A copy of a llava-hf checkpoint whose language model holds `tokens` positions."""
    copy = tmp_path / "small_context"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = tokens
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _record_stream_inputs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The inputs of every `VisionLanguageModel.stream` call from now on, in order (the calls still run)."""
    seen: list[dict[str, Any]] = []
    stream = VisionLanguageModel.stream

    def recording_stream(self: VisionLanguageModel, **inputs: Any) -> Any:
        seen.append(inputs)
        return stream(self, **inputs)

    monkeypatch.setattr(VisionLanguageModel, "stream", recording_stream)
    return seen


def test_several_images_reach_the_model_in_the_order_given(
    clip_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / "red.png", tmp_path / "blue.png"]
    Image.new("RGB", (32, 32), (220, 10, 10)).save(paths[0])
    Image.new("RGB", (32, 32), (10, 10, 220)).save(paths[1])
    seen = _record_stream_inputs(monkeypatch)
    argv = ["chat", "--model", str(clip_llava_dir), "--image", str(paths[0]), "--image", str(paths[1])]
    assert main([*argv, "--max-new-tokens", "2", "--json", "compare them"]) == 0
    prompt = json.loads(capsys.readouterr().out)["prompt"]
    assert prompt.count("<image>") == 2 and prompt.index("<image>\n<image>\ncompare them") >= 0
    _, processor = vlbridge.load(clip_llava_dir)
    expected = processor.image_processor([Image.open(p) for p in paths])  # (2, 3, H, W), red then blue
    assert torch.equal(seen[0]["pixel_values"], expected)


def test_a_video_reaches_the_model_as_frames_sampled_at_the_fps(
    clip_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_mp4(tmp_path / "clip.mp4", 12, 4)  # 3 s at 4 fps
    seen = _record_stream_inputs(monkeypatch)
    argv = ["chat", "--model", str(clip_llava_dir), "--video", str(path), "--fps", "2", "--max-frames", "4"]
    assert main([*argv, "--max-new-tokens", "2", "--json", "what changes?"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["prompt"].count("<video>\nwhat changes?") == 1 and len(reply["token_ids"]) == 2
    assert seen[0]["video_frames"].tolist() == [4]  # 6 segments at 2 fps, capped at 4 spread over the 3 s
    _, processor = vlbridge.load(clip_llava_dir)
    frames = read_video(path, 2.0, 4)
    assert [frame_index(f) for f in frames] == [1, 4, 7, 10]
    assert torch.equal(seen[0]["pixel_values"], processor.image_processor(frames))
    assert main([*argv[:4], str(tmp_path / "nothing.mp4"), "--json", "what?"]) == 2
    assert "nothing.mp4: no video file here" in capsys.readouterr().err


def test_interactive_chat_drops_the_oldest_turns_when_the_context_fills(
    clip_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = _small_context(clip_llava_dir, tmp_path, tokens=64)  # 16 visual tokens, the rest for text
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "green.png")
    questions = [f"question {word} about the circle" for word in ("one", "two", "three", "four", "five", "six")]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(questions) + "\n\n"))
    argv = ["chat", "--model", str(model_dir), "--image", str(tmp_path / "green.png"), "--json"]
    assert main([*argv, "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    replies = [json.loads(line) for line in captured.out.splitlines()]
    assert len(replies) == len(questions)  # every question answered
    assert "dropped the oldest" in captured.err and "context of 64 tokens" in captured.err
    last = replies[-1]["prompt"]
    assert questions[0] not in last and questions[-1] in last  # the oldest turn went, the newest stayed
    assert last.count("<image>") == 1 and "USER: <image>\n" in last  # the image moved to the first kept turn


def _vlbridge(*argv: bytes, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [os.fsencode(sys.executable), b"-m", b"vlbridge", *argv]
    return subprocess.run(command, input=stdin, capture_output=True, env=ENV, timeout=300, check=False)


def test_an_argument_that_is_not_utf8_is_a_one_line_error_naming_it(clip_llava_dir: Path) -> None:
    model = os.fsencode(clip_llava_dir)
    done = _vlbridge(b"chat", b"--model", model, b"--text-only", b"caf\xff?")
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    err = done.stderr.decode()
    assert err.startswith("vlbridge: error: argument 5 ('caf\\xff?', after --text-only) is not valid UTF-8")
    assert err.count("\n") == 1 and "Traceback" not in err
    done = _vlbridge(b"chat", b"--model", model, b"--image", b"\xffpic.png", b"hi")
    assert done.returncode == 2 and "('\\xffpic.png', after --image) is not valid UTF-8" in done.stderr.decode()


def test_a_stdin_line_that_is_not_utf8_is_a_one_line_error_naming_the_line(clip_llava_dir: Path) -> None:
    argv = (b"chat", b"--model", os.fsencode(clip_llava_dir), b"--text-only", b"--max-new-tokens", b"2", b"--json")
    done = _vlbridge(*argv, stdin=b"how many?\ncaf\xe9?\n")
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    assert len(done.stdout.splitlines()) == 1  # the first question was answered
    error = done.stderr.decode().splitlines()[-1]
    assert error == (
        "vlbridge: error: <stdin>:2: the question 'caf\\xe9?' is not valid UTF-8 at character 4; "
        "send questions as UTF-8 text"
    )
    assert "Traceback" not in done.stderr.decode()
