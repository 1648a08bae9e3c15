"""Counting parameter initialisation: the aten ops that fill tensors with initial values, outside the meta device.

Imported by name (tests/conftest.py puts tests/ on sys.path). Every torch.nn.init function and random tensor factory
ends in one of INITIALISING_OPS, so a TorchDispatchMode sees them all, whatever module calls them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

INITIALISING_OPS = {"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "randn", "rand", "randint"}
INITIALISING_OPS |= {"zero_", "fill_", "zeros", "ones", "full"}
"""aten ops that fill a tensor with initial values (what torch.nn.init and the random tensor factories run)."""


class InitialisingOps(TorchDispatchMode):
    """Records the initialising aten ops that wrote a tensor outside the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.elements = 0  # elements the recorded ops wrote

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in INITIALISING_OPS and isinstance(out, torch.Tensor) and not out.is_meta:
            self.calls.append(name)
            self.elements += out.numel()
        return out
