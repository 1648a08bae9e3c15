"""Parameter dtypes during a stage: trained parameters are float32 master weights, frozen ones stay as loaded.

A model loaded from a bf16 checkpoint (the embedded default, most released LLMs) keeps its frozen parts in bf16 for
the whole stage, so a connector-only stage on a bf16 LM holds the LM in half the memory a float32 copy takes. The
parameters a stage trains become float32 (`float32_masters`): the optimiser updates them, and small updates vanish in
bf16's 8-bit mantissa.

Frozen low-precision parameters are computed with in float32 (`UpcastFrozen`): each use casts the weight to float32,
so every forward and backward sees exactly the float32 values a float32 copy of the model would hold, and a stage
gives the same losses and weights as when the frozen parts were held in float32. Computing in bf16 instead pays only
where the hardware has bf16 arithmetic; on a CPU without it (AVX2; AVX-512 without avx512_bf16) a bf16 Linear ran 7x
slower than float32 while the cast-then-fp32 one ran at 1.07-1.35x (docs/checkpoints.md). A bf16 stage (`bf16: true`,
autocast) casts those float32 weights to bf16 again, as it does a float32 model's. How:

- `nn.Linear` (the bulk of every LM and ViT): a per-instance forward through `_UpcastLinear`, an autograd function
  that keeps the bf16 weight for the backward and casts it again there, so no float32 copy outlives its layer.
  The gradient flows to the input (a trained connector's output through a frozen LM); the frozen weight gets none.
- `nn.Embedding`: the looked-up rows are cast to float32 (the table stays bf16).
- Any other module (norms, the ViT's patch convolution, position and class embeddings: a small share of the weights)
  holds its frozen low-precision parameters in float32 for the stage, cast back (exactly) when it ends.

`UpcastFrozen.restore()` undoes all of it; the per-instance forwards leave module names and state_dict keys as they
are (as gradient checkpointing does, trainer.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


def float32_masters(params: Iterable[nn.Parameter]) -> list[tuple[nn.Parameter, torch.dtype]]:
    """Hold each of `params` (those a stage trains) in float32, in place (the Parameter objects stay the same, so
    tied weights stay tied); a low-precision value converts exactly. Returns those converted, with their dtype."""
    converted = []
    with torch.no_grad():
        for param in params:
            if param.is_floating_point() and param.dtype != torch.float32:
                converted.append((param, param.dtype))
                param.data = param.data.float()
    return converted


def restore_untrained(converted: list[tuple[nn.Parameter, torch.dtype]]) -> None:
    """Put back in its loaded dtype each parameter `float32_masters` converted whose values still fit that dtype
    exactly: one the stage never updated (a layer past the vision feature layer gets no gradient). A load of the
    stage's model gives it in that dtype (the base's tensor, unchanged), so a resumed run holds what an uninterrupted
    one does."""
    with torch.no_grad():
        for param, dtype in converted:
            low = param.data.to(dtype)
            if torch.equal(low.float(), param.data):
                param.data = low


class _UpcastLinear(torch.autograd.Function):
    """y = x W^T + b with a frozen low-precision W (and b) cast to x's dtype in the forward and again in the backward,
    so only the low-precision W is kept between them."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return grad.matmul(weight.to(grad.dtype)), None, None  # (..., out) @ (out, in) -> (..., in)


def _linear(module: nn.Linear, x: Tensor) -> Tensor:
    return _UpcastLinear.apply(x.float() if x.dtype in LOW_PRECISION else x, module.weight, module.bias)


def _embedding(module: nn.Embedding, ids: Tensor) -> Tensor:
    return type(module).forward(module, ids).float()


def _frozen_low(params: Iterable[nn.Parameter]) -> bool:
    found = list(params)
    return bool(found) and all(p.dtype in LOW_PRECISION and not p.requires_grad for p in found)


class UpcastFrozen:
    """Makes `module`'s frozen low-precision parameters compute in float32 (module docstring); `restore()` undoes it.
    Apply it after the stage's plan has set `requires_grad` and the trained parameters are float32."""

    def __init__(self, module: nn.Module) -> None:
        self.patched: list[nn.Module] = []
        self.upcast: list[tuple[nn.Parameter, torch.dtype]] = []
        seen: set[int] = set()
        for sub in module.modules():
            own = [p for p in sub.parameters(recurse=False) if id(p) not in seen]
            if isinstance(sub, nn.Linear) and _frozen_low(sub.parameters(recurse=False)):
                sub.forward = functools.partial(_linear, sub)
                self.patched.append(sub)
            elif type(sub) is nn.Embedding and _frozen_low(sub.parameters(recurse=False)):
                sub.forward = functools.partial(_embedding, sub)
                self.patched.append(sub)
            else:
                for param in own:
                    if param.dtype in LOW_PRECISION and not param.requires_grad:
                        self.upcast.append((param, param.dtype))
                        param.data = param.data.float()
            seen.update(id(p) for p in own)

    def restore(self) -> None:
        """Plain forwards back, and the parameters held in float32 for the stage back in their dtype (exactly: they
        were frozen, so they hold the values they were cast from)."""
        for sub in self.patched:
            del sub.forward
        for param, dtype in self.upcast:
            param.data = param.data.to(dtype)
        self.patched, self.upcast = [], []
