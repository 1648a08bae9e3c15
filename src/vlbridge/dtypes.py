"""Floating-point type names: the one table every flag, API argument and probe resolves a dtype name through.

Weights, activations and KV caches are kept in fp32, bf16 or fp16. Flags offer the short names (`--dtype bf16`);
the APIs also take torch's own spellings (`dtype="bfloat16"`), so a name read from a torch dtype or a config
resolves too. One table keeps the command line, `vlbridge.load`, the profiler and the memory probes agreeing on
which names exist.
"""

from __future__ import annotations

import torch

from vlbridge.errors import ConfigError

_SHORT: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

DTYPE_CHOICES: tuple[str, ...] = tuple(_SHORT)
"""The short names, as command-line flags offer them: fp32, bf16, fp16."""

DTYPES: dict[str, torch.dtype] = {**_SHORT, **{str(t).removeprefix("torch."): t for t in _SHORT.values()}}
"""Every accepted name -> its torch dtype: the short names, then torch's (float32, bfloat16, float16)."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype named `dtype` (a torch dtype is taken as it is); an unknown name raises ConfigError listing
    the accepted ones."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
