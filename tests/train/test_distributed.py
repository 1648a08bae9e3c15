"""Multi-process training: 2 CPU processes (torchrun, gloo) against single-process training of the same recipe.

One torchrun launch (tests/train/distributed_worker.py) runs, through the `vlbridge train` CLI: a DDP run, an FSDP
run (gradient checkpointing on), the DDP run interrupted after its step-2 checkpoint and resumed, and two runs
interrupted under one strategy and resumed under the other (checkpoints hold full states in one format). Each rank
reads micro-batches of 1 sample with grad_accum 2, so a step's global batch is 4 samples; the reference is one
process with batch_size 1 and grad_accum 4, which averages the losses of the same micro-batches
(train/distributed.py explains the equivalence).

Tolerances: the replicas of a run are bitwise equal (every rank applies the same averaged gradient), and a DDP run
resumed under DDP equals the uninterrupted one bitwise. Against the single process, per-step losses agree to rel
1e-5 and final weights to atol 1e-5 (measured, DDP and FSDP alike: 8e-8 rel in loss, 2.2e-7 in weights): the
gradients are the same sums in another float32 order (all-reduce or reduce-scatter instead of accumulation), which
Adam amplifies slightly. The in-process tests check sharding, per-rank seeding and init_world's errors without a
process group.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_run import instruct_stage, recipe, write_recipe

from vlbridge.errors import ConfigError
from vlbridge.train import train
from vlbridge.train.checkpoint import rng_state, set_rng_state
from vlbridge.train.distributed import DataParallel, FullyShardedDataParallel, SingleProcess, init_world
from vlbridge.train.metrics import read_metrics
from vlbridge.train.recipe import recipe_from_dict
from vlbridge.train.trainer import batch_order

WORKER = Path(__file__).parent / "distributed_worker.py"
STEPS = 3


def _stage(**kw) -> dict:
    return instruct_stage(**{"steps": STEPS, "batch_size": 1, "grad_accum": 2, "save_every": 2, **kw})


def _launch(plan: list[dict], out: Path) -> None:
    plan_file = out / "plan.json"
    plan_file.write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*cmd, str(WORKER), str(plan_file), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torchrun launch and the single-process reference; returns the folder holding all of them."""
    root = tmp_path_factory.mktemp("distributed")
    ddp = write_recipe(root / "ddp.yaml", recipe(root / "unused", tiny_data, tiny_tokenizer_dir, [_stage()]))
    fsdp = write_recipe(
        root / "fsdp.yaml",
        recipe(root / "unused", tiny_data, tiny_tokenizer_dir, [_stage(grad_checkpointing=True)],
               distributed={"strategy": "fsdp"}),
    )  # fmt: skip
    plan = [
        {"name": "ddp", "config": str(ddp)},
        {"name": "fsdp", "config": str(fsdp)},
        {"name": "ddp-resumed", "config": str(ddp), "interrupt_at": 2},
        {"name": "ddp-to-fsdp", "config": str(ddp), "interrupt_at": 2, "resume_config": str(fsdp)},
        {"name": "fsdp-to-ddp", "config": str(fsdp), "interrupt_at": 2, "resume_config": str(ddp)},
    ]
    _launch([{**entry, "run_dir": str(root / entry["name"])} for entry in plan], root)
    single = recipe(root / "single", tiny_data, tiny_tokenizer_dir, [_stage(grad_accum=4)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(recipe_from_dict(single))
    finally:
        torch.set_num_threads(threads)
    return root


def _replicas(root: Path, run: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(root / f"{run}-instruct-rank{r}.pt") for r in (0, 1)]


def _losses(run_dir: Path) -> list[float]:
    rows = read_metrics(run_dir / "instruct" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["loss"] for r in rows]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


@pytest.mark.parametrize("run", ["ddp", "fsdp", "ddp-to-fsdp", "fsdp-to-ddp"])
def test_replicas_agree_and_match_single_process(runs: Path, run: str) -> None:
    zero, one = _replicas(runs, run)
    assert all(torch.equal(zero[k], one[k]) for k in zero)
    assert _losses(runs / run) == pytest.approx(_losses(runs / "single"), rel=1e-5)
    _close(load_file(runs / run / "model.safetensors"), load_file(runs / "single" / "model.safetensors"), 1e-5)
    rows = [read_metrics(runs / r / "instruct" / "metrics.jsonl") for r in (run, "single")]
    assert [r["grad_norm"] for r in rows[0]] == pytest.approx([r["grad_norm"] for r in rows[1]], rel=1e-5)  # global
    assert rows[0][-1]["tokens"] == rows[1][-1]["tokens"]  # every rank's tokens are counted


def test_fsdp_weights_equal_ddp(runs: Path) -> None:
    _close(_replicas(runs, "fsdp")[0], _replicas(runs, "ddp")[0], 1e-5)


def test_resume_under_ddp_equals_the_uninterrupted_run(runs: Path) -> None:
    resumed, ddp = _replicas(runs, "ddp-resumed")[0], _replicas(runs, "ddp")[0]
    assert all(torch.equal(resumed[k], ddp[k]) for k in ddp)
    assert _losses(runs / "ddp-resumed") == _losses(runs / "ddp")


def test_only_rank_0_writes(runs: Path) -> None:
    writes = [json.loads((runs / f"writes-rank{r}.json").read_text()) for r in (0, 1)]
    assert writes[1] == []
    assert any(w.endswith("ckpt-00000002.pt") for w in writes[0])  # the hook sees rank 0's writes
    single = {p.relative_to(runs / "single") for p in (runs / "single").rglob("*")}
    for run in ("ddp", "fsdp"):
        assert {p.relative_to(runs / run) for p in (runs / run).rglob("*")} == single


def _pair(world_size: int = 2) -> list[DataParallel]:
    return [DataParallel(rank, world_size, torch.device("cpu"), owns_group=False) for rank in range(world_size)]


def test_ranks_read_disjoint_slices_of_the_single_process_batches() -> None:
    ranks = [batch_order(11, 2, seed=3, epoch=1, world=w) for w in _pair()]
    single = batch_order(11, 2, seed=3, epoch=1, world=SingleProcess())  # micro-batches of one process, in order
    assert [len(r) for r in ranks] == [2, 2]  # 11 samples: 2 global batches of 2 x 2, the same count on each rank
    assert [b for pair in zip(*ranks, strict=True) for b in pair] == single[:4]
    assert batch_order(3, 2, seed=0, epoch=0, world=_pair()[1]) == [[batch_order(3, 2, 0, 0, SingleProcess())[0][1]]]


def test_each_rank_is_seeded_deterministically() -> None:
    saved = rng_state()
    try:
        draws = []
        for world in (*_pair(), _pair()[0]):
            world.reseed(seed=5, step=2)
            draws.append((random.random(), float(np.random.rand()), torch.rand(2)))
        assert draws[0][:2] == draws[2][:2] and torch.equal(draws[0][2], draws[2][2])  # same (seed, step, rank)
        assert draws[0][0] != draws[1][0] and not torch.equal(draws[0][2], draws[1][2])  # another rank
    finally:
        set_rng_state(saved)


def test_init_world_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert isinstance(init_world("cpu"), SingleProcess)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        init_world("cpu")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="ddp, fsdp"):
        init_world("cpu", strategy="zero3")
    with pytest.raises(ConfigError, match=r"cpu \(gloo\) or cuda \(nccl\)"):
        init_world("meta")


def test_fsdp_refuses_scalar_parameters() -> None:
    module = torch.nn.Linear(2, 2)
    module.scale = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ConfigError, match=r"0-dimensional parameters \(scale\).*strategy: ddp"):
        FullyShardedDataParallel(0, 2, torch.device("cpu"), owns_group=False).wrap(module)


def test_recipe_strategy_is_checked(tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"distributed\.strategy"):
        recipe_from_dict(recipe(tiny_data / "run", tiny_data, None, [_stage()], distributed={"strategy": "zero3"}))
