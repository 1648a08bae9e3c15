"""The distributed seam: everything the trainer needs to know about other processes, in one small interface.

The trainer is rank-agnostic: it never calls torch.distributed itself. It asks a `World` who it is (rank,
world_size, is_main), which part of each global batch it reads (`shard`), how to wrap the training module (`wrap`),
when gradients are synchronised (`sync`), how to clip them, what a checkpoint holds (`checkpoint_view`), how to seed
its RNGs and when to wait. `SingleProcess` is plain `vlbridge train`. Launched by torchrun
(`torchrun --nproc-per-node 2 -m vlbridge train --config FILE`, one machine or many), `init_world` joins the process
group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) with the gloo backend on CPU or
nccl on CUDA (one GPU per process: cuda:LOCAL_RANK), and the recipe's `distributed.strategy` picks:

- `ddp` (DistributedDataParallel, Li et al., "PyTorch Distributed", 2020): every process holds the whole model;
  gradients are averaged across processes in the backward pass of the last micro-batch of each optimiser step
  (`no_sync` on the others), so every replica applies the same update and stays identical.
- `fsdp` (FSDP2 `fully_shard`; Zhao et al., "PyTorch FSDP", 2023): each transformer block (every entry of an
  nn.ModuleList) and then the rest are sharded across processes; parameters are gathered for each block's forward
  and backward, gradients reduce-scattered. The trainable module is a sharded copy: the plain model waits (on the
  CPU when training on CUDA) and gets the trained weights back, gathered, when the stage ends (`finish`).
  Checkpoints hold full, unsharded states gathered on rank 0, in the format DDP and a single process write, so a
  run checkpointed under one strategy resumes under the other (with the same number of processes: the data
  position counts this rank's micro-batches). FSDP2 cannot shard 0-dimensional parameters: a module holding one
  raises ConfigError (the contrastive temperature is kept 1-D for this reason).

Batches: `batch_size` is per process. The epoch order is cut into global batches of batch_size * world_size and
rank r reads the r-th slice of each, so every rank runs the same number of steps on disjoint samples. An optimiser
step on W processes with grad_accum A averages the per-micro-batch mean losses of exactly the micro-batches one
process would average with grad_accum A * W, so it computes the same update (up to float summation order), and the
same update as one process with batch_size * W when every micro-batch has the same number of supervised tokens.
Batch-level objectives see one rank's micro-batch, as with accumulation: contrastive negatives are per micro-batch.

Only rank 0 writes checkpoints, metrics, plots and models and shows the progress bar; the others wait at a barrier
after each write. Each rank's RNG is re-seeded from (seed, step, rank) at the start of a stage and after every
checkpoint, so dropout differs across ranks yet a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from vlbridge.errors import ConfigError
from vlbridge.train.recipe import STRATEGIES

_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class World:
    """The processes of one training run, as the trainer sees them (this base class: one process)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, metrics, plots and the progress bar."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on, given the recipe's (under torchrun: cuda becomes cuda:LOCAL_RANK)."""
        return device

    def shard(self, batch: Sequence[int]) -> list[int]:
        """This process's part of one global batch of sample indices (every rank gets the same count)."""
        return list(batch)

    def reseed(self, seed: int, step: int) -> None:
        """Seed this rank's RNGs for the steps after `step` (one process: nothing; its checkpoints restore RNG)."""

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module the training loop calls (DDP/FSDP wrap it; a single process uses it as is)."""
        return module

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        """The module whose parameters train, inside whatever `wrap` returned."""
        return wrapped

    def sync(self, wrapped: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
        """Context for one micro-batch's forward and backward: synchronise gradients only when `enabled`."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip the global gradient norm of `params` to `max_norm`; returns the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def checkpoint_view(self, wrapped: nn.Module, optimizer: Optimizer) -> tuple[Any, Any]:
        """(module, optimiser) as checkpoint.py saves and restores them: objects with state_dict / load_state_dict
        over full (unsharded) states. Every rank calls it (under FSDP it gathers the states onto rank 0)."""
        return self.unwrap(wrapped), optimizer

    def finish(self, wrapped: nn.Module, module: nn.Module) -> None:
        """At the end of a stage, leave the trained weights in `module` (the one given to `wrap`) on every rank."""

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all processes."""
        return value

    def barrier(self) -> None:
        """Wait until every process reaches this point."""

    def close(self) -> None:
        """Release the process group, if any."""


class SingleProcess(World):
    """One process: rank 0 of 1."""


class DataParallel(World):
    """A torchrun process group training with DistributedDataParallel."""

    def __init__(self, rank: int, world_size: int, device: torch.device, owns_group: bool) -> None:
        self.rank, self.world_size, self.device, self._owns_group = rank, world_size, device, owns_group

    def place(self, device: torch.device) -> torch.device:
        return self.device if device.type == "cuda" else device

    def shard(self, batch: Sequence[int]) -> list[int]:
        per_rank = len(batch) // self.world_size
        return list(batch[self.rank * per_rank : (self.rank + 1) * per_rank])

    def reseed(self, seed: int, step: int) -> None:
        value = ((seed * 1_000_003 + step) * 65_537 + self.rank) % 2**63
        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)

    def wrap(self, module: nn.Module) -> nn.Module:
        # find_unused_parameters: a trained part may sit out a micro-batch (a text-only batch skips the connector,
        # a ViT read at its penultimate layer never runs the last); buffers are never trained, so not re-broadcast
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=True, forward_sync_buffers=False
        )

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module

    def sync(self, wrapped: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if enabled else wrapped.no_sync()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _Stateful:
    """A state gathered for checkpoint.py: `state_dict` returns it, `load_state_dict` restores through `load`."""

    def __init__(self, state: dict[str, Any], load: Callable[[dict[str, Any], bool], Any]) -> None:
        self._state, self._load = state, load

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        self._load(state, strict)


class FullyShardedDataParallel(DataParallel):
    """A torchrun process group training with FSDP2 (`fully_shard`): parameters, gradients and Adam state sharded."""

    def wrap(self, module: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        scalars = [name for name, p in module.named_parameters() if p.ndim == 0]
        if scalars:
            raise ConfigError(
                f"FSDP cannot shard 0-dimensional parameters ({', '.join(scalars)}); train this stage with "
                "distributed.strategy: ddp, or make them 1-element 1-D tensors"
            )
        mesh = init_device_mesh(self.device.type, (self.world_size,))  # explicit: CPU training on a machine with GPUs
        sharded = copy.deepcopy(module).float()  # FSDP2 gathers a block's parameters as one buffer of one dtype
        if self.device.type == "cuda":
            module.to("cpu")  # the plain model waits off the GPU; finish() gives it the trained weights back
        lists = [m for m in sharded.modules() if isinstance(m, nn.ModuleList)]
        blocks = [block for ml in lists for block in ml if next(block.parameters(), None) is not None]
        for block in reversed(blocks):  # innermost first: a nested block must be sharded before its parent
            fully_shard(block, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        sharded.set_reduce_scatter_unused_params(True)  # like DDP's find_unused_parameters
        return sharded

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped

    @contextlib.contextmanager
    def _no_sync(self, wrapped: Any) -> Iterator[None]:
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)

    def sync(self, wrapped: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if enabled else self._no_sync(wrapped)

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor: reduce it

    def checkpoint_view(self, wrapped: nn.Module, optimizer: Optimizer) -> tuple[Any, Any]:
        from torch.distributed.checkpoint import state_dict as dcp

        on_rank0 = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
        from_full = dcp.StateDictOptions(full_state_dict=True)
        module_state = dcp.get_model_state_dict(wrapped, options=on_rank0)
        optimizer_state = dcp.get_optimizer_state_dict(wrapped, optimizer, options=on_rank0)
        ids = {id(p): name for name, p in wrapped.named_parameters()}
        names = [ids[id(p)] for group in optimizer.param_groups for p in group["params"]]
        module = _Stateful(
            module_state or wrapped.state_dict(),  # other ranks: the sharded state, for its keys
            lambda state, strict: dcp.set_model_state_dict(
                wrapped, state, options=dcp.StateDictOptions(full_state_dict=True, strict=strict)
            ),
        )
        optim = _Stateful(
            _rekey(optimizer_state, {name: i for i, name in enumerate(names)}) if optimizer_state else {},
            lambda state, _: dcp.set_optimizer_state_dict(
                wrapped, optimizer, _rekey(state, dict(enumerate(names))), options=from_full
            ),
        )
        return module, optim

    def finish(self, wrapped: nn.Module, module: nn.Module) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        module.load_state_dict(get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True)))
        module.to(self.device)


def _rekey(optimizer_state: dict[str, Any], keys: dict[Any, Any]) -> dict[str, Any]:
    """An optimiser state dict with its parameter keys mapped through `keys` (names <-> torch's integer ids)."""
    return {
        "state": {keys[k]: v for k, v in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [keys[k] for k in g["params"]]} for g in optimizer_state["param_groups"]],
    }


def init_world(device: torch.device | str = "cpu", strategy: str = "ddp") -> World:
    """The World this process runs in: single-process unless launched by torchrun (WORLD_SIZE > 1), in which case
    it joins the process group (gloo on CPU, nccl on CUDA) and trains with `strategy` (ddp | fsdp)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SingleProcess()
    missing = [key for key in _TORCHRUN_ENV if key not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; launch multi-process training with "
            "`torchrun --nproc-per-node N -m vlbridge train ...`, or unset WORLD_SIZE"
        )
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed.strategy is {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    device = torch.device(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process LOCAL_RANK {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"multi-process training runs on cpu (gloo) or cuda (nccl), not {device.type}")
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    cls = FullyShardedDataParallel if strategy == "fsdp" else DataParallel
    return cls(rank, world_size, device, owns_group)
