"""`vlbridge train`: a run killed with SIGKILL mid-stage and resumed with --resume ends with the same weights as an
uninterrupted run (tolerance: none, bitwise on CPU); user errors exit 2 with a clear line; every stage end to end."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))

import tiny_run
from tiny_run import align_stage, instruct_stage, recipe, stage, write_recipe

import vlbridge
from vlbridge.cli import main as cli_main
from vlbridge.errors import VlbridgeError
from vlbridge.train.trainer import StageTrainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models; a busy 2-core machine makes 2 threads crawl


@pytest.fixture
def cli():
    """In-process `vlbridge ...`, one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cli_main.main
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tokenizer_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run.make_tokenizer(data, tmp_path_factory.mktemp("tokenizer"))


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlbridge", *args]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_uninterrupted_run(data, tokenizer_dir, tmp_path) -> None:
    text = stage("text", "text_lm", "captions.json", {"language_model": "full"}, {"language_model": 1e-2}, steps=6)
    long_align = align_stage(steps=150, batch_size=2, save_every=10, log_every=10)
    config = write_recipe(tmp_path / "r.yaml", recipe(tmp_path / "unused", data, tokenizer_dir, [text, long_align]))
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_command("train", "--config", str(config), "--run-dir", str(full)), env=ENV, check=True)

    proc = subprocess.Popen(
        _command("train", "--config", str(config), "--run-dir", str(cut)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((cut / "align").glob("ckpt-*.pt")):  # kill right after the first align checkpoint appears
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert (cut / "text" / "done.json").is_file() and not (cut / "align" / "done.json").exists()
    text_done = (cut / "text" / "done.json").stat().st_mtime_ns

    resumed = subprocess.run(
        _command("train", "--config", str(config), "--run-dir", str(cut), "--resume"),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from ckpt-" in resumed.stderr
    assert (cut / "text" / "done.json").stat().st_mtime_ns == text_done  # the finished stage was skipped
    want, got = _weights(full), _weights(cut)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed weights differ from the uninterrupted run"


def test_user_errors_exit_2_with_a_clear_line(cli, data, tokenizer_dir, tmp_path, capsys) -> None:
    config = write_recipe(tmp_path / "r.yaml", recipe(tmp_path / "run", data, tokenizer_dir, [align_stage(steps=1)]))
    assert cli(["train", "--config", str(config), "--set", "stages=[{name: a, stepz: 1}]"]) == 2
    assert "stages[0].stepz" in capsys.readouterr().err
    assert cli(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["train", "--config", str(config)]) == 0
    assert "vlbridge chat --model" in capsys.readouterr().out
    assert cli(["train", "--config", str(config)]) == 2  # the run dir already holds a run
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_every_stage_end_to_end_then_load_and_generate(cli, tmp_path) -> None:
    clip = stage("clip", "contrastive", "captions.json", {"vision_encoder": "full"}, {"vision_encoder": 1e-3})
    regions = stage("regions", "regions", "regions.jsonl", {"vision_encoder": "full"}, {"vision_encoder": 1e-3})
    stages = [
        stage("text", "text_lm", "instruct.json", {"language_model": "full"}, {"language_model": 3e-3}),
        {**clip, "batch_size": 8, "max_length": 64},
        {**regions, "data_format": "regions", "bf16": True},
        align_stage(save_every=2),
        stage("drills", "causal_lm", "drills.json", {"language_model": "full"}, {"language_model": 1e-3}),
        instruct_stage(lora=True, max_length=200, grad_checkpointing=True, bf16=True, group_by_length=True),
    ]
    data = {"root": str(tmp_path / "data"), "synth": {"n": 24, "seed": 0, "image_size": 48, "drills": 8}}
    config = write_recipe(tmp_path / "r.yaml", {**recipe(tmp_path / "run", tmp_path, None, stages), "data": data})
    assert cli(["train", "--config", str(config)]) == 0
    run = tmp_path / "run"
    for name in ("text", "clip", "regions", "align", "drills", "instruct"):
        assert (run / name / "done.json").is_file() and (run / name / "loss.png").is_file()
        assert (run / name / "model" / "model.safetensors").is_file()
    assert (run / "instruct" / "adapter" / "adapter_model.safetensors").is_file()
    model, processor = vlbridge.load(run)
    assert model.config.template == "chatml"
    assert model.config.language_model.vocab_size == processor.tokenizer.vocab_size
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour is the circle?"}])
    inputs = processor(text=prompt, images=[tmp_path / "data" / "images" / "test_000000.png"], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=5)
    assert ids.shape[0] == 1 and inputs["input_ids"].shape[1] < ids.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert isinstance(processor.decode(ids[0, inputs["input_ids"].shape[1] :]), str)


def test_ctrl_c_mid_training_ends_quietly_and_says_how_to_resume(data, tokenizer_dir, tmp_path) -> None:
    long_align = align_stage(steps=150, batch_size=2, save_every=10, log_every=1)
    config = write_recipe(tmp_path / "r.yaml", recipe(tmp_path / "unused", data, tokenizer_dir, [long_align]))
    run_dir = tmp_path / "run dir"
    args = ["train", "--config", str(config), "--run-dir", str(run_dir), "--set", "seed=3"]
    with (tmp_path / "stderr").open("w+") as stderr:
        proc = subprocess.Popen(_command(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        while not (run_dir / "align" / "metrics.jsonl").is_file():  # the stage has begun its steps
            assert proc.poll() is None, "the run ended before its first step"
            assert time.monotonic() < deadline, "no step within 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == cli_main.EXIT_INTERRUPTED
        stderr.seek(0)
        err = stderr.read()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (run_dir / "align" / "done.json").exists()
    last = err.rstrip("\n").split("\n")[-1]  # on a line of its own, below the progress bar
    assert last == f"vlbridge: training interrupted; the run is resumable: vlbridge {shlex.join([*args, '--resume'])}"


def test_a_training_error_starts_on_its_own_line_below_the_progress_bar(
    cli, data, tokenizer_dir, tmp_path, capsys, monkeypatch
) -> None:
    config = write_recipe(tmp_path / "r.yaml", recipe(tmp_path / "run", data, tokenizer_dir, [align_stage(steps=4)]))
    real_update, steps = StageTrainer._update, []

    def fail_at_step_3(self, *args):
        steps.append(len(steps) + 1)
        if len(steps) == 3:
            raise VlbridgeError("stage 'align': the loss became nan; lower the learning rates")
        return real_update(self, *args)

    monkeypatch.setattr(StageTrainer, "_update", fail_at_step_3)
    assert cli(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "align:  50%" in err  # the bar was drawn
    assert "\nvlbridge: error: stage 'align': the loss became nan" in err, err


def test_a_bad_record_reads_as_one_line_with_dataloader_workers_as_without(cli, data, tokenizer_dir, tmp_path, capsys):
    broken = shutil.copytree(data, tmp_path / "data")
    for image in (broken / "images").glob("train_*.png"):
        image.write_bytes(b"not a png")
    lines = []
    for workers in (0, 2):
        spec = recipe(tmp_path / f"run{workers}", broken, tokenizer_dir, [align_stage(steps=1)])
        config = write_recipe(
            tmp_path / f"r{workers}.yaml", {**spec, "data": {"root": str(broken), "num_workers": workers}}
        )
        assert cli(["train", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "DataLoader worker" not in err
        lines.append([line for line in err.splitlines() if line.startswith("vlbridge: error: ")])
    assert len(lines[0]) == 1 and lines[0] == lines[1]
    assert "captions.json:" in lines[0][0] and "images/train_" in lines[0][0] and "PNG or JPEG" in lines[0][0]


def test_bad_config_files_overrides_and_run_dirs_exit_2_with_one_line(cli, data, tokenizer_dir, tmp_path, capsys):
    config = write_recipe(tmp_path / "r.yaml", recipe(tmp_path / "run", data, tokenizer_dir, [align_stage(steps=1)]))
    broken = tmp_path / "broken.yaml"
    broken.write_text(config.read_text().replace("stages:", "stages: [", 1))
    (tmp_path / "a_file").write_text("")
    runs = {
        "config file": ["--config", str(broken)],
        "override 'stages.0.steps=[', line 1, column 2": ["--config", str(config), "--set", "stages.0.steps=["],
        "is a file": ["--config", str(config), "--run-dir", str(tmp_path / "a_file")],
        "stages[0].lr.connector is nan": ["--config", str(config), "--set", "stages.0.lr.connector=.nan"],
    }
    for message, args in runs.items():
        assert cli(["train", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vlbridge: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()
