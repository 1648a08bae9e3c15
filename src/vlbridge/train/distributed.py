"""The distributed seam: everything the trainer needs to know about other processes, in one small interface.

The trainer is rank-agnostic: it never calls torch.distributed itself. It asks a `World` who it is (rank,
world_size, is_main), which share of the data it reads (`shard`), how to wrap the training module (`wrap`: DDP or
FSDP), how to average a metric (`all_reduce_mean`) and when to wait (`barrier`). `SingleProcess` is the default
implementation, for plain `vlbridge train`. A multi-process implementation (torch.distributed with gloo on CPU or
nccl on GPU, launched by torchrun; DDP, or FSDP by option) subclasses `World` here and is chosen by `init_world`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from vlbridge.errors import ConfigError


class World:
    """The processes of one training run, as the trainer sees them."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, metrics, plots and the progress bar."""
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This process's share of an epoch's sample order (every rank gets the same count)."""
        return list(indices)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module the training loop calls (DDP/FSDP wrap it; a single process uses it as is)."""
        return module

    def unwrap(self, module: nn.Module) -> nn.Module:
        """The plain module inside whatever `wrap` returned (for state dicts)."""
        return module

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all processes."""
        return value

    def barrier(self) -> None:
        """Wait until every process reaches this point."""

    def close(self) -> None:
        """Release the process group, if any."""


class SingleProcess(World):
    """One process: rank 0 of 1."""


def init_world() -> World:
    """The World this process runs in: single-process unless launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ConfigError(
            f"this process was launched as one of {world_size} (WORLD_SIZE), but multi-process training is not "
            "available in this build yet; run `vlbridge train` as a single process"
        )
    return SingleProcess()
