"""The `vlbridge` CLI: info, chat (one-shot, JSON, interactive) and its error path."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import vlbridge
from vlbridge.cli.main import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, main


def test_info_reports_parameters_tokens_and_context(clip_llava_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(clip_llava_dir), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    model, _ = vlbridge.load(clip_llava_dir)
    assert facts["parameters"]["vision_encoder"] == sum(p.numel() for p in model.vision_encoder.parameters())
    assert facts["parameters"]["connector"] == sum(p.numel() for p in model.connector.parameters())
    assert facts["visual_tokens_per_image"] == 16  # (32 / 8)^2 patches, CLS dropped
    assert facts["context_length"] == 256
    assert main(["info", str(clip_llava_dir)]) == 0
    assert "visual tokens      16 per 32px image" in capsys.readouterr().out


def test_chat_json_one_shot(clip_llava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "green.png")
    args = [
        "chat",
        "--model",
        str(clip_llava_dir),
        "--image",
        str(tmp_path / "green.png"),
        "--max-new-tokens",
        "5",
        "what colour?",
    ]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 5
    _, proc = vlbridge.load(clip_llava_dir)
    assert out["text"] == proc.decode(out["token_ids"], skip_special_tokens=True)
    assert out["prompt"].count("<image>") == 1
    # streamed plain output prints the same reply
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == out["text"].strip()


def test_chat_interactive_keeps_history(
    clip_llava_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("how many?\nwhat colour?\n\n"))
    assert main(["chat", "--model", str(clip_llava_dir), "--text-only", "--json", "--max-new-tokens", "3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    _, proc = vlbridge.load(clip_llava_dir, vision=False)
    history = [
        {"role": "user", "content": "how many?"},
        {"role": "assistant", "content": lines[0]["text"]},
        {"role": "user", "content": "what colour?"},
    ]
    assert lines[0]["prompt"] == proc.apply_chat_template(history[:1])
    assert lines[1]["prompt"] == proc.apply_chat_template(history)


def test_chat_bad_image_is_a_clear_error(clip_llava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    code = main(["chat", "--model", str(clip_llava_dir), "--image", str(tmp_path / "fake.png"), "hi"])
    assert code == 2
    err = capsys.readouterr().err
    assert "fake.png" in err and err.startswith("vlbridge: error:")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--stop", "", "hi"], "an empty stop string"),
        (["--do-sample", "--temperature", "nan", "hi"], "temperature must be finite"),
        (["how \udcff many?"], "('how \\xff many?') is not valid UTF-8 at character 5"),
    ],
)
def test_chat_bad_generation_input_is_one_error_line(
    clip_llava_dir: Path, args: list[str], pattern: str, capsys: pytest.CaptureFixture
) -> None:
    """A question that was not valid UTF-8 reaches Python as lone surrogates (sys.argv uses surrogateescape)."""
    assert main(["chat", "--model", str(clip_llava_dir), "--text-only", "--max-new-tokens", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlbridge: error: ") and err.count("\n") == 1 and pattern in err


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["chat", "--model", str(tmp_path / "none"), "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_synth_takes_the_writers_flags_and_replaces_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["data", "synth", "--out", str(tmp_path / "d"), "--n", "12", "--image-size", "48"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "test:" in out and len(out.splitlines()) == 4  # a summary, not the stats JSON
    assert main(args) == 2  # a DataError: exit status 2 with the message
    assert "not empty; choose a new folder or pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--turns", "2", "2"]) == 0
    instruct = json.loads((tmp_path / "d/instruct.json").read_text())
    questions = [r for r in instruct if not r["id"].endswith("_caption")]
    assert {len(r["conversations"]) for r in questions} == {4}  # two question turns per image


def test_a_closed_output_pipe_ends_the_command_quietly() -> None:
    """`vlbridge chat ... | head -c 10`: the reader leaves first; no traceback, the shell's SIGPIPE status."""
    sample = Path(vlbridge.__file__).parent / "assets" / "default" / "sample.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlbridge", "chat", "--image", str(sample), "Describe the image briefly."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    proc.stdout.close()  # before the first word is written: every write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.fixture(scope="module")
def endless_dir(clip_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llava with no EOS and a long context: a reply goes on until max_new_tokens, long enough to be
    interrupted mid-generation."""
    from dataclasses import replace

    from vlbridge.lm.tokenizer import Tokenizer
    from vlbridge.model.io import read_config
    from vlbridge.model.vlm import VisionLanguageModel

    config, _ = read_config(clip_llava_dir)
    lm = replace(config.language_model, eos_token_id=None, max_position_embeddings=8192)
    model = VisionLanguageModel(replace(config, language_model=lm), tokenizer=Tokenizer.from_dir(clip_llava_dir))
    path = tmp_path_factory.mktemp("endless")
    model.save_pretrained(path)
    return path


def _interrupted(proc: subprocess.Popen) -> str:
    """Send Ctrl-C's SIGINT to a running `vlbridge` and return its stderr once it has ended (with status 130)."""
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # only if it is still running
    stderr = stderr.decode()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    return stderr


def test_ctrl_c_in_an_interactive_chat_ends_it_quietly(clip_llava_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlbridge", "chat", "--model", str(clip_llava_dir), "--text-only"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "type a question" in proc.stderr.readline().decode()  # waiting for the first question
    assert _interrupted(proc) == "\n"  # only a newline, so the shell prompt starts on a line of its own


def test_ctrl_c_during_a_one_shot_reply_ends_it_quietly(endless_dir: Path) -> None:
    args = ["chat", "--model", str(endless_dir), "--text-only", "--max-new-tokens", "8000", "a red circle"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlbridge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert os.read(proc.stdout.fileno(), 1)  # the reply is streaming
    assert _interrupted(proc) == "\n"
