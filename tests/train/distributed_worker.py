"""One rank of the tiny multi-process training runs of test_distributed.py, launched there by torchrun.

`python distributed_worker.py PLAN.json OUT_DIR` runs each planned `vlbridge train` command line in turn through
the CLI, as `torchrun -m vlbridge train` does, in one process group joined here (gloo cannot rejoin a group in the
same torchrun launch reliably: its rendezvous may read the previous group's addresses). Planned runs may be
interrupted on every rank right after the checkpoint of a given step (standing in for a kill) and then resumed,
with the same recipe or another (`resume_config`: e.g. a DDP checkpoint resumed under FSDP).
For the test it records, outside the run directories: this rank's model weights after each stage
(OUT_DIR/<run>-<stage>-rank<r>.pt) and every write this rank made inside a run directory (OUT_DIR/writes-rank<r>.json,
seen through Python audit hooks: opens for writing, renames, mkdir, removals).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import vlbridge.train.pipeline as pipeline
from vlbridge.cli.main import main
from vlbridge.train.distributed import DataParallel

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class Interrupted(Exception):
    """Stands in for a kill of every rank right after a checkpoint."""


def _is_write(event: str, args: tuple) -> str | None:
    """The path an audited event writes to, if it writes."""
    if event == "open" and isinstance(args[0], (str, Path)):
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS):
            return str(args[0])
    if event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        return str(args[1] if event == "os.rename" else args[0])
    return None


def run(plan: list[dict], out: Path) -> None:
    rank = int(os.environ["RANK"])
    writes: list[str] = []
    watched = [str(Path(entry["run_dir"]).resolve()) for entry in plan]

    def audit(event: str, args: tuple) -> None:
        path = _is_write(event, args)
        if path is not None and any(os.path.abspath(path).startswith(w) for w in watched):
            writes.append(path)

    sys.addaudithook(audit)
    current: dict = {}
    run_stage = pipeline.run_stage

    def recording_run_stage(recipe, index, model, *args, **kw) -> None:
        run_stage(recipe, index, model, *args, **kw)
        name = f"{current['name']}-{recipe.stages[index].name}-rank{rank}.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / name)

    reseed = DataParallel.reseed

    def interrupting_reseed(self, seed: int, step: int) -> None:
        reseed(self, seed, step)
        if step == current.get("interrupt_at"):
            raise Interrupted

    pipeline.run_stage = recording_run_stage
    DataParallel.reseed = interrupting_reseed
    for entry in plan:
        current.clear()
        current.update(entry)
        args = ["train", "--config", entry["config"], "--run-dir", entry["run_dir"], *entry.get("args", [])]
        if "interrupt_at" in entry:
            try:
                main(args)
            except Interrupted:
                current.pop("interrupt_at")
                args[2] = entry.get("resume_config", entry["config"])
                args.append("--resume")
            else:
                raise AssertionError(f"run {entry['name']} was not interrupted")
        if main(args) != 0:
            raise SystemExit(f"run {entry['name']} failed")
    (out / f"writes-rank{rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    run(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    dist.destroy_process_group()
