"""Learning-rate schedule: linear warmup, then cosine decay to a floor (Loshchilov & Hutter, "SGDR", 2017).

The factor multiplies each param group's peak learning rate, so per-part rates keep their ratios throughout. The
schedule is a small callable object, so `LambdaLR.state_dict()` stores its settings with the step it has reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from vlbridge.errors import ConfigError


@dataclass
class WarmupCosine:
    """Factor of the peak rate after `step` optimiser steps: ramps up over `warmup` steps, then a half cosine that
    reaches `min_ratio` at step `total`.

    During warmup step s (0-based) uses (s + 1) / warmup, so the first update already moves and step warmup - 1 runs
    at the peak; from there progress p = (s - warmup) / (total - warmup) gives min + (1 - min) (1 + cos(pi p)) / 2.
    """

    total: int
    warmup: int = 0
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(total: int, warmup_ratio: float) -> int:
    """Warmup length for a run of `total` steps: round(total * ratio), at most total - 1 so the decay happens."""
    return min(round(total * warmup_ratio), max(0, total - 1))


def build_scheduler(optimizer: Optimizer, total: int, warmup: int, min_ratio: float = 0.0) -> LambdaLR:
    """A LambdaLR applying WarmupCosine to every param group of `optimizer`."""
    if total < 1:
        raise ConfigError(f"a schedule needs at least one step, got total={total}")
    if not 0 <= warmup < total:
        raise ConfigError(f"warmup ({warmup}) must be within 0..{total - 1} steps")
    return LambdaLR(optimizer, WarmupCosine(total=total, warmup=warmup, min_ratio=min_ratio))
