"""Small shared building blocks: activations by config name (HF names), so every part resolves them alike."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vlbridge.errors import ConfigError


class QuickGELU(nn.Module):
    """CLIP's x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TanhGELU(nn.Module):
    """GELU with the tanh approximation (HF `gelu_pytorch_tanh` / `gelu_new`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "quick_gelu": QuickGELU,
    "gelu_pytorch_tanh": TanhGELU,
    "gelu_new": TanhGELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "linear": nn.Identity,  # HF's name for no activation (a llava projector exported from a one-layer connector)
}


def activation(name: str) -> nn.Module:
    """The activation module for an HF activation name."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()
