"""`vlbridge eval --task synthetic_video` on the video world's own test.jsonl: every question answered as the model
answers its video at the asked sampling, scored per type beside the majority baselines of stats.json, and an image
task or a missing video refused before anything is answered."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import vlbridge
from vlbridge.cli.main import main
from vlbridge.data.synthetic.video import VIDEO_TYPES
from vlbridge.data.synthetic.video_writer import VideoSynthOptions, synthesize_videos

pytest.importorskip("av")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four held-out questions, one of each type, about 6-second 32 px clips."""
    out = tmp_path_factory.mktemp("video_world")
    synthesize_videos(out, VideoSynthOptions(n=8, seed=1, image_size=32, steps=6, fps=1, test_fraction=0.5))
    return out


def test_video_questions_are_answered_and_scored_per_type(
    clip_llava_dir: Path, video_dir: Path, tmp_path: Path, capsys
) -> None:
    args = ["eval", "--task", "synthetic_video", "--model", str(clip_llava_dir), "--data", str(video_dir)]
    assert main([*args, "--video-max-frames", "3", "--max-new-tokens", "3", "--out", str(tmp_path)]) == 0
    assert "majority baseline" in capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())["by_type"]
    stats = json.loads((video_dir / "stats.json").read_text())["types"]
    assert scores["overall"]["n"] == 4 and {k for k in scores if k != "overall"} == set(VIDEO_TYPES)
    assert all(scores[k]["majority_baseline"] == stats[k]["majority_baseline"] for k in VIDEO_TYPES)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    question = json.loads((video_dir / "test.jsonl").read_text().splitlines()[0])
    model, processor = vlbridge.load(clip_llava_dir)
    prompt = processor.apply_chat_template([{"role": "user", "content": f"<video>\n{question['question']}"}])
    inputs = processor(text=prompt, videos=[video_dir / question["video"]], fps=1.0, max_frames=3)
    ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert rows[0]["prediction"] == processor.decode(ids[0, inputs["input_ids"].shape[1] :]).strip()
    assert json.loads((tmp_path / "run.json").read_text())["video_max_frames"] == 3


def test_image_task_and_missing_video_are_refused_before_answering(
    clip_llava_dir: Path, video_dir: Path, tmp_path: Path, capsys
) -> None:
    model = ["--model", str(clip_llava_dir), "--out", str(tmp_path / "out")]
    assert main(["eval", "--task", "synthetic", "--data", str(video_dir), *model]) == 2
    assert "evaluate this folder with --task synthetic_video" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "test.jsonl").write_text(
        json.dumps({"question_id": 1, "video": "no.mp4", "question": "a?", "answer": "x"})
    )
    assert main(["eval", "--task", "synthetic_video", "--data", str(broken), *model]) == 2
    assert re.search(r"video file .*no\.mp4 does not exist", capsys.readouterr().err)
