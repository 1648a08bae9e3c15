"""Mid-stage training checkpoints: everything a resumed run needs to continue as if it had never stopped.

One file per checkpoint, `<stage dir>/ckpt-<step>.pt`, written atomically (temporary file + rename, so a kill
mid-write leaves the previous checkpoint intact). It holds what the stage changes of the training module's state (the
trained parameters: connector, LoRA adapters, objective heads, ...; and buffers), not the frozen parameters: for those
it names the base the stage started from (where it came from and a SHA-256 of the frozen tensors), which a resumed
run rebuilds and must match, or CheckpointError names it. So a connector-only stage's checkpoints hold no LM or vision
weights. It also holds the optimiser and scheduler states, the RNG states (Python, NumPy, torch CPU and CUDA), the
data position (epoch, batches consumed, the seed the epoch order derives from) and the running metrics. Restoring all
of it makes a resumed run's weights equal an uninterrupted run's (bitwise on CPU: same data, same random draws, same
arithmetic). Files are read back with `torch.load(weights_only=True)`: only tensors and plain Python values.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from vlbridge.atomic import atomic_path
from vlbridge.errors import CheckpointError

FORMAT = "vlbridge-train"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


@dataclass
class TrainState:
    """Where a stage is: optimiser steps done, the data position, and running totals."""

    stage: str
    step: int = 0  # optimiser steps completed
    epoch: int = 0  # current pass over the data
    batch: int = 0  # micro-batches of this epoch already consumed
    data_seed: int = 0  # the epoch's sample order is a permutation seeded by (data_seed, epoch)
    tokens: int = 0  # tokens trained on so far
    elapsed_s: float = 0.0  # training wall time so far (excluding time before a resume)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last logged metrics row
    window_losses: list[float] = field(default_factory=list)  # step losses since that row (the next row's mean)


@dataclass(frozen=True)
class Base:
    """The frozen parameters a stage starts from: their names, where they came from, and a hash of their contents."""

    source: str  # the checkpoint folder the stage's model was loaded from, or how it was made
    digest: str  # SHA-256 over the frozen tensors' names, dtypes, shapes and bytes
    keys: Set[str]


def frozen_base(module: nn.Module, source: str) -> Base:
    """The Base of `module` as it is now: every parameter that does not train (tied names included), hashed."""
    keys = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    state = module.state_dict()
    digest = hashlib.sha256()
    for name in sorted(keys):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return Base(source=source, digest=digest.hexdigest(), keys=frozenset(keys))


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch (CPU, and every CUDA device if present)."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": (version, list(mt), gauss),
        "numpy": (np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(stage_dir: str | Path) -> list[Path]:
    """The stage's checkpoint files, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(stage_dir).glob("ckpt-*.pt") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(stage_dir: str | Path) -> Path | None:
    """The newest checkpoint of a stage, None when it has none."""
    found = checkpoints(stage_dir)
    return found[-1] if found else None


def save_checkpoint(
    stage_dir: str | Path,
    module: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    state: TrainState,
    keep: int = 2,
    base: Base | None = None,
) -> Path:
    """Write `ckpt-<step>.pt` atomically, then delete all but the newest `keep` checkpoints of the stage. With `base`,
    the module's frozen parameters are left out and `base` is named instead."""
    path = Path(stage_dir) / f"ckpt-{state.step:08d}.pt"
    frozen = base.keys if base is not None else frozenset()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base": None if base is None else {"source": base.source, "digest": base.digest},
        "module": {k: v.detach().clone() for k, v in module.state_dict().items() if k not in frozen},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "state": asdict(state),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for old in checkpoints(stage_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | Path,
    module: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    restore_rng: bool = True,
    base: Base | None = None,
) -> TrainState:
    """Restore module, optimiser, scheduler (and RNG) from `path`; returns the saved TrainState.

    `module` must be built as it was when saved (same LoRA adapters, same objective), or CheckpointError lists
    the keys that differ. A checkpoint that names a base restores only what it holds, on top of `module`'s frozen
    parameters, which must be that base (`base`, the same digest), or CheckpointError names both.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and what to do
        raise CheckpointError(
            f"cannot read training checkpoint {path} ({err}); delete it to resume from an older one"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vlbridge training checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {payload.get('format_version')} is not supported")
    saved_base = payload.get("base")
    if saved_base is not None and (base is None or base.digest != saved_base["digest"]):
        now = "no frozen base" if base is None else f"{base.source} (SHA-256 {base.digest[:12]})"
        raise CheckpointError(
            f"training checkpoint {path} was written on top of the frozen weights of {saved_base['source']} "
            f"(SHA-256 {saved_base['digest'][:12]}), but the stage now starts from {now}: that base was changed or "
            "replaced; restore it, or delete the stage's checkpoints to train the stage again from the start"
        )
    frozen = base.keys if saved_base is not None and base is not None else frozenset()
    expected, saved = set(module.state_dict()) - frozen, set(payload["module"])
    if expected != saved:
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        raise CheckpointError(
            f"training checkpoint {path} does not fit the model this recipe builds: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}; was the recipe changed since it was written?"
        )
    module.load_state_dict(payload["module"], strict=not frozen)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return TrainState(**payload["state"])
