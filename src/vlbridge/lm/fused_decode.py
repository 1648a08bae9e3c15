"""All decoder layers of a decode step in one native call on x86 CPUs with AVX2: the check that the layers and
their inputs are what `native.decode_stack` computes, and the call.

At SmolLM2-135M's size a decode step in eager PyTorch spent as long on its ~25 small operations per layer (norms,
RoPE, cache writes, attention, the MLP's gating, each a few microseconds of dispatch) as on reading the weights.
`native.decode_stack` runs plain pre-norm Llama/Qwen2 blocks with a SiLU MLP (float32, bf16 or int8 weights, float32
or bf16 KV cache) for one new token per row, all layers in one call, padded batches and a server's rows of different
lengths included (a key mask, and each row's write position from `KVCache.write_positions`). Everything else falls
back to the eager layers: training and autograd, autocast, prompts (more than one token), hooks between layers
(gated cross-attention), LoRA-wrapped or other projection types, other activations, head widths not a
multiple of 8, and CPUs where the native kernels do not run (`native.status()`: without AVX2 or a C compiler).

Reading the layer's seven projections through nn.Module attributes and building the kernel's pointer table took
~100 us a layer in Python, a third of SmolLM2's int8 decode step. So each layer keeps the table it was last given
(`_Plan`, a plain attribute, not module state), valid while the tensors the layer holds have the same addresses,
dtypes and shapes, checked on every call through the modules' own dicts; any change (a load, `.to()`, quantising,
a LoRA wrapper) builds a new one. Weights converted for the kernel (bf16 biases or scales) are never cached.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlbridge.lm import native
from vlbridge.lm.cpu_kernels import Linear
from vlbridge.lm.int8 import Int8Linear
from vlbridge.lm.kv_cache import KVCache

Projection = tuple[Tensor, Tensor | None, Tensor | None]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
PLAN = "_native_plan"


def _projection(module: nn.Module) -> Projection | None:
    """(weight, scale or None, bias or None) as a projection the kernel reads holds them, else None: exactly a float
    `Linear` or an `Int8Linear` (a LoRA wrapper is neither). Read through the module's dicts (210 calls a step)."""
    kind = type(module)
    if kind is Int8Linear:
        return module._buffers["weight"], module._buffers["weight_scale"], module._parameters.get("bias")
    if kind is Linear or kind is nn.Linear:
        return module._parameters["weight"], None, module._parameters.get("bias")
    return None


def _signature(tensor: Tensor | None) -> tuple[object, ...]:
    return () if tensor is None else (tensor.data_ptr(), tensor.dtype, tensor.shape)


@dataclass
class _Plan:
    """A layer's pointer table for `native.decode_layer` and the state of its tensors it was built for."""

    key: tuple[object, ...]
    table: ctypes.Array
    ffn: int
    converted: list[Projection] | None
    """float32 copies the table points at (bf16 scales or biases), kept alive for one call; None: the table points
    at the layer's own tensors only, and the plan is cached."""


def _float32(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.float().contiguous()


def _plan(layer: nn.Module, projections: list[Projection]) -> _Plan | None:
    """The layer's valid plan (rebuilt when its tensors changed), or None where the kernel cannot read them."""
    key = tuple(_signature(t) for projection in projections for t in projection)
    plan = layer.__dict__.get(PLAN)
    if plan is not None and plan.key == key:
        return plan
    for weight, scale, _ in projections:
        if weight.dtype not in native.WEIGHT_CODES or not weight.is_contiguous():
            return None
        if weight.dtype == torch.int8 and scale is None:
            return None
    converted = [(weight, _float32(scale), _float32(bias)) for weight, scale, bias in projections]
    own = all(a is b for pair in zip(projections, converted, strict=True) for a, b in zip(*pair, strict=True))
    plan = _Plan(key, native.projection_table(converted), projections[4][0].shape[0], None if own else converted)
    if own:
        layer.__dict__[PLAN] = plan
    return plan


def _layer_plan(layer: nn.Module) -> _Plan | None:
    """A layer's plan, or None where the kernel does not compute it (another activation or projection type, a head
    width not a multiple of 8)."""
    attn, mlp = layer._modules["self_attn"], layer._modules["mlp"]
    if type(mlp._modules["act_fn"]) is not nn.SiLU or attn.head_dim % 8:
        return None
    projections = []
    for module in (*(attn._modules[n] for n in ATTENTION), *(mlp._modules[n] for n in MLP)):
        projection = _projection(module)
        if projection is None:
            return None
        projections.append(projection)
    return _plan(layer, projections)


def fused_decode_stack(
    layers: list[nn.Module], x: Tensor, rope: tuple[Tensor, Tensor], attn_mask: Tensor | None, kv_cache: KVCache | None
) -> Tensor | None:
    """The output (B, 1, D) of `DecoderLayer`s `layers` in turn for x (B, 1, D), computed by `native.decode_stack`,
    their keys and values written to `kv_cache`; or None where the layers or inputs are outside what the kernel
    computes (the caller then runs the eager layers; nothing was written)."""
    if kv_cache is None or x.shape[1] != 1 or x.device.type != "cpu":
        return None
    length = kv_cache.length + 1  # the keys a decode step's mask covers: the cached ones and this token's
    if attn_mask is not None and attn_mask.shape != (x.shape[0], 1, 1, length):
        return None
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or not native.available():
        return None
    plans, norms, caches = [], [], []
    cache_dtype = kv_cache.keys[0].dtype
    for layer in layers:
        plan = _layer_plan(layer)
        if plan is None:
            return None
        index = layer._modules["self_attn"].layer_idx
        keys, values = kv_cache.keys[index], kv_cache.values[index]
        if keys.dtype != cache_dtype or values.dtype != cache_dtype or keys.shape[0] != x.shape[0]:
            return None  # the kernel takes one cache row per input row
        if not (keys.is_contiguous() and values.is_contiguous()):
            return None
        plans.append(plan)  # holds any converted tensors its table points at until the call returns
        norms += [layer._modules[n]._parameters["weight"].float().contiguous() for n in NORMS]
        caches += [keys, values]
    if cache_dtype not in native.CACHE_DTYPES or any(plan.ffn != plans[0].ffn for plan in plans):
        return None
    kv_cache.room(1)
    attn = layers[0]._modules["self_attn"]
    rows, hd = x.shape[0], attn.head_dim
    hidden = x.reshape(rows, -1).to(torch.float32, copy=True).contiguous()  # (B, D), updated in place
    cos, sin = (t.reshape(-1, hd).float().expand(rows, hd).contiguous() for t in rope)  # (B, hd)
    eps = layers[0]._modules["input_layernorm"].eps
    tables = [plan.table for plan in plans]
    key_mask = None if attn_mask is None else attn_mask.reshape(rows, length).to(torch.uint8).contiguous()
    write_at = kv_cache.write_positions().to(torch.long).contiguous()  # (B,)
    shape = (attn.num_heads, plans[0].ffn, hd)
    native.decode_stack(hidden, tables, norms, caches, shape, eps, (cos, sin), (write_at, length, key_mask))
    return hidden.view(x.shape).to(x.dtype)
