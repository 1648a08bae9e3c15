"""INT8 weight-only quantisation of linear layers: per-output-channel symmetric int8 weights, float activations.

Each weight row w_o is stored as round(w_o / s_o) in [-127, 127] with s_o = max|w_o| / 127, a float32 scale per
output channel (the "dynamic range" scheme of SPEC section 6; LLM.int8()'s vector-wise quantisation, Dettmers et al.
2022, without its outlier split). Only weights are quantised; products run on float activations, so a quantised
model decodes at a quarter of float32's weight traffic, which is what bounds decode on a CPU.

`Int8Linear` holds the int8 weight and its scales as buffers (`weight`, `weight_scale`), so a quantised model's
state_dict saves as int8 and loads back as int8 without a float copy or re-quantising. In an LM whose head is tied to
its token embeddings, the embedding becomes an `Int8Embedding` over the head's own int8 table and scales (the head's
output channels are the vocabulary's rows), so no float table is kept beside it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vlbridge.atomic import ALIGNMENT
from vlbridge.lm import native
from vlbridge.lm.cpu_kernels import emulated_bf16_rows, native_bf16

QUANTIZATIONS = ("int8",)
"""The weight quantisations `vlbridge.load(quantize=...)` and the `--quantize` flags accept."""

INT8_MAX = 127
PACK_K_MULTIPLE = 16
"""PyTorch's CPU `_weight_int8pack_mm` is only correct when in_features is a multiple of this: at other widths it
returned garbage or crashed the process (PyTorch 2.13, K in 8..136). Such layers dequantise instead."""
PACK_ALIGNMENT = 16
"""Byte boundary PyTorch's CPU `_weight_int8pack_mm` needs its int8 weight on: on an AVX-512 CPU (AMD EPYC with
avx512_bf16, PyTorch 2.13) it crashed the process on weights 1, 4, 8 or 20 bytes off one, as a weight mapped from a
safetensors file is when a tensor of odd size precedes it (`align_weights` copies such weights when a checkpoint
loads). Weights off it dequantise instead."""


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight (O, I), float32 scale (O,)) of a float weight (O, I): symmetric, one scale per output row.

    An all-zero row gets scale 1 (its int8 row is zero either way), so dequantising never divides by zero."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / INT8_MAX  # (O,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8).contiguous()  # (O, I) row-major
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and float32 per-output-channel scales: y = (x @ q^T) * scale + bias.

    On x86 CPUs with AVX2 products of a few rows (decode) run in vlbridge's own kernel (`native`), which widens the
    int8 weight in registers and so reads a quarter of float32's bytes: PyTorch's int8 kernel was compute-bound on an
    AVX2-only CPU and 1.5x slower on an AVX-512 one with native bf16.
    Elsewhere on CPU the product runs in PyTorch's int8 weight-only kernel (`aten._weight_int8pack_mm`) on bf16
    activations, the result cast back to the input's dtype: that kernel reads the int8 weight as it is, and it is
    vectorised for bf16 activations, not for float32 ones. Other devices, widths the kernel gets
    wrong (`PACK_K_MULTIPLE`), and products of many rows (a prompt) on CPUs without native bf16, where the kernel's
    bf16 arithmetic is emulated (`cpu_kernels.emulated_bf16_rows`), dequantise the weight per call, to float32 on
    such CPUs. The measurements behind these choices, per CPU, are in docs/benchmarks.md ("INT8 decode").
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The quantised copy of `linear` (weights as `quantize_weight`, bias kept in its float dtype)."""
        with torch.device("meta"):  # every tensor is replaced below: nothing to allocate or fill
            layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scale = quantize_weight(linear.weight)
        layer.weight = q.to(linear.weight.device)
        layer.weight_scale = scale.to(linear.weight.device)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        out = native.linear(x, self.weight, self.weight_scale, self.bias)  # None where its kernel does not apply
        if out is not None:
            return out.to(x.dtype)
        flat = x.reshape(-1, self.in_features)  # (M, I)
        cpu = x.device.type == "cpu"
        packable = self.in_features % PACK_K_MULTIPLE == 0 and self.weight.data_ptr() % PACK_ALIGNMENT == 0
        if cpu and packable and not emulated_bf16_rows(flat.shape[0]):
            packed = flat.to(torch.bfloat16).contiguous()
            out = torch.ops.aten._weight_int8pack_mm(packed, self.weight, self.weight_scale.to(torch.bfloat16))
        else:
            dtype = torch.float32 if cpu and not native_bf16() else x.dtype  # no emulated bf16 product
            out = F.linear(flat.to(dtype), self.weight.to(dtype)) * self.weight_scale.to(dtype)  # (M, O)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Embedding(nn.Module):
    """Token embeddings read from an int8 table (V, D) with one float scale per row: a lookup dequantises only the
    rows it gathers, in the scales' dtype. `tied_to` shares an int8 LM head's table and scales."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def tied_to(cls, head: Int8Linear) -> Int8Embedding:
        """An embedding over `head`'s int8 weight and scales, the same tensors (a tied LM head)."""
        with torch.device("meta"):  # both buffers are the head's, set below
            embedding = cls(head.out_features, head.in_features)
        embedding.weight = head.weight
        embedding.weight_scale = head.weight_scale
        return embedding

    def forward(self, input_ids: Tensor) -> Tensor:
        rows = F.embedding(input_ids, self.weight)  # (..., D) int8
        scales = F.embedding(input_ids, self.weight_scale[:, None])  # (..., 1)
        return rows.to(scales.dtype) * scales

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def _replace_linears(module: nn.Module, quantize: bool) -> int:
    """Swap every nn.Linear under `module` for an Int8Linear: quantised from it, or an empty one of the same shape
    to load int8 weights into. Returns how many were swapped."""
    swapped = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            if quantize:
                new = Int8Linear.from_linear(child)
            else:
                new = Int8Linear(child.in_features, child.out_features, bias=child.bias is not None)
            setattr(module, name, new.to(child.weight.device))
            swapped += 1
        else:
            swapped += _replace_linears(child, quantize)
    return swapped


def align_weights(module: nn.Module) -> int:
    """Copy every Int8Linear weight under `module` that lies off an ALIGNMENT boundary (the CPU allocator's; mapped in
    place from a checkpoint file) onto one, so PyTorch's int8 kernel can read it (`PACK_ALIGNMENT`); returns how many
    were copied. A tied LM must re-tie afterwards (`DecoderLM.tie_weights`)."""
    copied = 0
    for layer in module.modules():
        weight = layer.weight if isinstance(layer, Int8Linear) else None
        if weight is not None and weight.device.type == "cpu" and weight.data_ptr() % ALIGNMENT:
            layer.weight = layer.weight.clone()
            copied += 1
    return copied


def quantize_linears(module: nn.Module) -> int:
    """Quantise every nn.Linear under `module` in place (each float weight is freed as its layer is replaced);
    returns how many layers were quantised. A weight shared with another module (a tied LM head) stays float there
    until the LM re-ties (`DecoderLM.tie_weights`: the embeddings then read the head's int8 table)."""
    return _replace_linears(module, quantize=True)


def int8_skeleton(module: nn.Module) -> int:
    """Replace every nn.Linear under `module` with an empty Int8Linear of its shape, ready for a quantised
    checkpoint's int8 weights and scales (nothing is quantised); returns how many layers were replaced."""
    return _replace_linears(module, quantize=False)
