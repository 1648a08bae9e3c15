"""The training loop of one stage: plan, optimiser, schedule, gradient accumulation, checkpoints, progress, metrics.

`StageTrainer(...).run()` trains a model in place for one stage of a recipe. Per optimiser step it runs
`grad_accum` micro-batches (each loss divided by grad_accum, so the update equals one of the mean loss over them),
clips the global gradient norm, steps AdamW with per-part learning rates under linear warmup + cosine decay, and
every `save_every` steps writes a checkpoint from which `resume` continues exactly: the data order is a seeded
permutation per epoch (nothing is drawn from the global RNG for it), and the position within it is checkpointed.
Trained parameters are float32 master weights; frozen ones stay in the dtype they were loaded in (a bf16 LM frozen in
a connector-only stage takes half the memory) and compute in float32 (train/precision.py). Options: bf16 autocast
(fp32 with a warning where the hardware has no native bf16), gradient checkpointing of the ViT and LM layers, fixed
seeds. A tqdm bar shows loss, tokens/s and the ETA; rows go to metrics.jsonl; a loss curve is drawn at the end. All
inter-process concerns go through `World` (train/distributed.py), so this file has no distributed code.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vlbridge.data.hygiene.augment import EpochAugmented
from vlbridge.devices import native_bf16, resolve_device
from vlbridge.errors import ConfigError, DataError, TrainingError
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train import lora as lora_ops
from vlbridge.train.checkpoint import TrainState, frozen_base, latest_checkpoint, load_checkpoint, save_checkpoint
from vlbridge.train.distributed import SingleProcess, World
from vlbridge.train.metrics import MetricsLog, plot_loss
from vlbridge.train.objectives import OBJECTIVES, Batch, TrainStep, build_objective
from vlbridge.train.precision import UpcastFrozen, float32_masters, restore_untrained
from vlbridge.train.recipe import StageRecipe
from vlbridge.train.schedule import build_scheduler, warmup_steps
from vlbridge.train.stages import apply_plan, plan_for
from vlbridge.train.worker_errors import CarryErrors, CarryErrorsCollate, raise_carried

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_lm_gradient_checkpointing(language_model: nn.Module, enabled: bool) -> None:
    """Recompute each decoder layer in the backward pass instead of storing its activations (Chen et al., 2016).

    The layers' forward is wrapped per instance, so module names and state_dict keys are unchanged.
    """
    for layer in language_model.model.layers:
        if enabled:
            layer.forward = functools.partial(checkpoint, type(layer).forward.__get__(layer), use_reentrant=False)
        elif "forward" in vars(layer):
            del layer.forward


GROUP_CHUNK = 50
"""With lengths, samples are grouped within chunks of this many global batches (a random share of the data each)."""


def batch_order(
    n: int, batch_size: int, seed: int, epoch: int, world: World, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """This rank's micro-batches of an epoch: a permutation seeded by (seed, epoch), cut into global batches of
    batch_size * world_size samples, of which each rank reads its share (`World.shard`). Full batches only (one
    short batch only when the data is smaller than a global batch).

    With `lengths` (one per sample), samples of similar length share a batch, so less compute goes to padding: the
    permutation is cut into chunks of GROUP_CHUNK global batches, each chunk is sorted by length and cut into
    batches, and the batches are shuffled (seeded too). Every batch is still a random draw of the data, only
    narrowed to neighbours in length (as transformers' `group_by_length` and LLaVA's length-grouped sampler do)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    size = batch_size * world.world_size
    if n < size:
        mine = world.shard(order[: n - n % world.world_size])
        return [mine] if mine else []
    if lengths is not None:
        chunk = size * GROUP_CHUNK
        order = [i for at in range(0, n, chunk) for i in sorted(order[at : at + chunk], key=lambda j: -lengths[j])]
    batches = [order[i : i + size] for i in range(0, n - size + 1, size)]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [world.shard(batch) for batch in batches]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class StageResult:
    """What a finished stage reports."""

    steps: int
    loss: float | None
    tokens: int
    elapsed_s: float


class StageTrainer:
    """Trains `model` in place for one stage; `run()` resumes from the stage's newest checkpoint when asked."""

    def __init__(
        self,
        stage: StageRecipe,
        model: VisionLanguageModel,
        dataset: Dataset,
        collate_fn: Callable[[Sequence[Any]], Batch],
        stage_dir: str | Path,
        seed: int,
        world: World | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        base_source: str = "the weights the stage was given",
    ) -> None:
        """`base_source` names where `model`'s weights came from; checkpoints name it beside their frozen weights'
        hash instead of storing those weights (train/checkpoint.py)."""
        self.stage, self.model, self.dataset, self.collate_fn = stage, model, dataset, collate_fn
        self.base_source = base_source
        self.stage_dir = Path(stage_dir)
        self.seed = seed
        self.world = world or SingleProcess()
        self.device = resolve_device(device)
        self.num_workers = num_workers
        self.n_samples = len(dataset)  # type: ignore[arg-type]
        self.lengths: list[int] | None = None
        if stage.group_by_length:
            if not hasattr(dataset, "lengths"):
                raise ConfigError(
                    f"stage {stage.name!r}: group_by_length needs token data (conversations or text); "
                    f"the {stage.objective} objective's samples have no length to group by"
                )
            self.lengths = dataset.lengths()
        if self.n_samples == 0:
            raise DataError(
                f"stage {stage.name!r} has no training samples; check its data file (relative to data.root) and the "
                "records the stage log says it skipped or dropped",
                stage.data,
            )
        batches = len(batch_order(self.n_samples, stage.batch_size, seed, 0, self.world))
        if batches == 0:
            raise ConfigError(
                f"stage {stage.name!r} has {self.n_samples} samples, fewer than the {self.world.world_size} processes; "
                "start fewer processes or give the stage more data"
            )
        self.total_steps = stage.steps or stage.epochs * max(1, math.ceil(batches / stage.grad_accum))
        self.bf16 = stage.bf16 and native_bf16(self.device)
        if stage.bf16 and not self.bf16:
            log.warning(
                "stage %s: bf16 was asked for, but %s has no native bf16 (emulated, a bf16 matmul ran 4.5-140x "
                "slower than fp32), so the stage trains in fp32; set bf16: false to silence this",
                stage.name,
                self.device,
            )

    def _batches(self, state: TrainState) -> Iterator[Batch]:
        """Micro-batches from `state`'s data position on, forever (epoch after epoch), advancing the position. A
        VlbridgeError of a sample or batch is raised as it was, also from a worker process (train/worker_errors)."""
        while True:
            batches = batch_order(
                self.n_samples, self.stage.batch_size, state.data_seed, state.epoch, self.world, self.lengths
            )
            if isinstance(self.dataset, EpochAugmented):
                self.dataset.set_epoch(state.epoch)  # before the loader copies the dataset into its workers
            loader = DataLoader(
                CarryErrors(self.dataset),
                batch_sampler=batches[state.batch :],
                collate_fn=CarryErrorsCollate(self.collate_fn),
                num_workers=self.num_workers,
                generator=torch.Generator().manual_seed(state.data_seed),  # keeps the global RNG untouched
            )
            for batch in loader:
                batch = raise_carried(batch)
                state.batch += 1
                yield _to_device(batch, self.device)
            state.epoch, state.batch = state.epoch + 1, 0

    def _prepare(self) -> tuple[nn.Module, TrainStep, list[nn.Parameter], torch.optim.Optimizer, Any]:
        """(the wrapped module the loop calls, the plain TrainStep, trained parameters, optimiser, scheduler)."""
        stage, model = self.stage, self.model
        if stage.lora is not None:
            wrapped = lora_ops.apply_lora(model.language_model, stage.lora)
            log.info(
                "stage %s: LoRA r=%d alpha=%d on %d linear layers", stage.name, stage.lora.r, stage.lora.alpha, wrapped
            )
        objective = build_objective(stage.objective, model, self.dataset, stage)
        declared = OBJECTIVES.get(stage.objective).parts
        assert tuple(objective.parts()) == declared, f"{stage.objective} builds parts {list(objective.parts())}"
        parts: dict[str, nn.Module | None] = {
            "vision_encoder": model.vision_encoder,
            "connector": model.connector,
            "language_model": model.language_model,
            **objective.parts(),
        }
        groups = apply_plan(plan_for(stage, list(objective.parts())), parts, stage.weight_decay)
        self.masters = float32_masters(p for g in groups for p in g["params"])
        train_step = TrainStep(model, objective).to(self.device)
        self.base = frozen_base(train_step, self.base_source)  # before FSDP shards it: every rank hashes it whole
        self.upcast = UpcastFrozen(train_step)
        names = {id(p): name for name, p in train_step.named_parameters()}
        module = self.world.wrap(train_step)
        trained = self.world.unwrap(module)  # FSDP trains a sharded copy: the groups take its parameters, by name
        current = dict(trained.named_parameters())
        groups = [{**g, "params": [current[names[id(p)]] for p in g["params"]]} for g in groups]
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, betas=tuple(stage.betas))
        scheduler = build_scheduler(
            optimizer, self.total_steps, warmup_steps(self.total_steps, stage.warmup_ratio), stage.min_lr_ratio
        )
        if stage.grad_checkpointing:
            set_lm_gradient_checkpointing(trained.model.language_model, True)
            if trained.model.vision_encoder is not None:
                trained.model.vision_encoder.gradient_checkpointing = True
        return module, train_step, params, optimizer, scheduler

    def _finish(self, module: nn.Module, train_step: TrainStep) -> None:
        """Undo the stage's training-only changes: trained weights back in the model, checkpointing off, LoRA merged
        (or saved and removed)."""
        model, stage = self.model, self.stage
        self.world.finish(module, train_step)
        if self.world.is_main:
            train_step.objective.save(self.stage_dir)
        set_lm_gradient_checkpointing(model.language_model, False)
        if model.vision_encoder is not None:
            model.vision_encoder.gradient_checkpointing = False
        self.upcast.restore()
        restore_untrained(self.masters)
        if stage.lora is not None:
            if self.world.is_main:
                lora_ops.save_adapter(model.language_model, self.stage_dir / ADAPTER_DIR, stage.lora)
            if stage.lora.merge:
                lora_ops.merge_lora(model.language_model)
            else:
                lora_ops.unload_lora(model.language_model)

    def _restore(self, resume: bool, module: nn.Module, optimizer: Any, scheduler: Any) -> TrainState:
        """A fresh state, or the newest checkpoint's (module, optimiser, scheduler and RNG restored too)."""
        metrics = MetricsLog(self.stage_dir, enabled=self.world.is_main)
        ckpt = latest_checkpoint(self.stage_dir) if resume else None
        if ckpt is None:
            metrics.truncate_after(0)
            return TrainState(stage=self.stage.name, data_seed=self.seed)
        state = load_checkpoint(ckpt, *self.world.checkpoint_view(module, optimizer), scheduler, base=self.base)
        metrics.truncate_after(state.step)
        log.info("stage %s: resumed from %s (step %d of %d)", self.stage.name, ckpt.name, state.step, self.total_steps)
        return state

    def _update(
        self,
        module: nn.Module,
        batches: Iterator[Batch],
        params: list[nn.Parameter],
        optimizer: Any,
        scheduler: Any,
        step: int,
    ) -> tuple[float, int, float, dict[str, float]]:
        """Optimiser step `step` over grad_accum micro-batches: (mean loss, tokens, grad norm, learning rates used).

        A loss or gradient norm that is not finite raises TrainingError before the optimiser steps, so the weights
        never take a NaN update (every rank sees the same all-reduced loss and global norm, so all of them stop)."""
        stage = self.stage
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        losses, tokens = [], 0
        for i in range(stage.grad_accum):
            with self.world.sync(module, enabled=i == stage.grad_accum - 1):  # other ranks' gradients: last one only
                with autocast:
                    out = module(next(batches))
                (out.loss / stage.grad_accum).backward()
            losses.append(out.loss.detach().float())
            tokens += out.tokens
        means = self.world.all_reduce_mean(torch.stack([torch.stack(losses).mean(), losses[0].new_tensor(tokens)]))
        loss, tokens = float(means[0]), round(float(means[1]) * self.world.world_size)  # tokens: all ranks'
        self._check_finite("loss", loss, step)
        grad_norm = self.world.clip_grad_norm(params, stage.clip_grad or math.inf)
        self._check_finite("gradient norm", grad_norm, step)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, tokens, grad_norm, lrs

    def _check_finite(self, what: str, value: float, step: int) -> None:
        """TrainingError naming the stage and step when `value` (the step's loss or gradient norm) is NaN or inf."""
        if not math.isfinite(value):
            raise TrainingError(
                f"stage {self.stage.name!r}, step {step}: the {what} is {value}; lower the stage's learning rates, "
                "set clip_grad, or turn bf16 off, and check the stage's data"
            )

    def run(self, resume: bool = False) -> StageResult:
        """Train the stage to its last step (from the newest checkpoint when `resume`), then finish it."""
        stage, world = self.stage, self.world
        module, train_step, params, optimizer, scheduler = self._prepare()
        state = self._restore(resume, module, optimizer, scheduler)
        world.reseed(self.seed, state.step)
        metrics = MetricsLog(self.stage_dir, enabled=world.is_main)
        module.train()
        batches = self._batches(state)
        with tqdm(
            total=self.total_steps,
            initial=state.step,
            desc=stage.name,
            unit="step",
            mininterval=0.5,
            disable=not world.is_main,
        ) as bar:  # closed (its line ended) before any error or Ctrl-C is reported
            window_tokens, window_start = 0, time.perf_counter()
            while state.step < self.total_steps:
                step_start = time.perf_counter()
                loss, tokens, grad_norm, lrs = self._update(
                    module, batches, params, optimizer, scheduler, state.step + 1
                )
                state.step += 1
                state.tokens += tokens
                state.elapsed_s += time.perf_counter() - step_start
                state.window_losses.append(loss)
                window_tokens += tokens
                rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
                if state.step % stage.log_every == 0 or state.step == self.total_steps:
                    state.metrics = {
                        "stage": stage.name,
                        "step": state.step,
                        "epoch": state.epoch,
                        "loss": sum(state.window_losses) / len(state.window_losses),  # mean since the previous row
                        "grad_norm": grad_norm,
                        "lr": lrs,  # the rates this step applied
                        "tokens": state.tokens,
                        "tokens_per_s": rate,
                        "elapsed_s": state.elapsed_s,
                    }
                    metrics.append(state.metrics)
                    state.window_losses = []
                    window_tokens, window_start = 0, time.perf_counter()
                if stage.save_every and state.step % stage.save_every == 0 and state.step < self.total_steps:
                    saved = world.checkpoint_view(module, optimizer)  # every rank: FSDP gathers the shards to rank 0
                    if world.is_main:
                        save_checkpoint(
                            self.stage_dir, *saved, scheduler, state, stage.keep_checkpoints, base=self.base
                        )
                    world.barrier()
                    world.reseed(self.seed, state.step)
        self._finish(module, train_step)
        if world.is_main:
            plot_loss(metrics.path, self.stage_dir / "loss.png", title=f"stage {stage.name} ({stage.objective})")
        loss = state.metrics.get("loss")
        return StageResult(steps=state.step, loss=loss, tokens=state.tokens, elapsed_s=state.elapsed_s)
