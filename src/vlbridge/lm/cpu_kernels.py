"""The kernels behind the decoder's linear layers and its one attention call: PyTorch's, except where a CPU path
measured faster.

decoder.py reads as the plain Llama model; what runs each product and each attention lives here, every exception to
PyTorch's default with the measurement that justifies it:

- `Linear`: inference products of a few rows (decode) in vlbridge's own kernel (`native`) on x86 CPUs with AVX2
  (AVX-512 ones included); other float32 products of a few rows as W @ x^T on AVX-512 CPUs; other bf16 ones of a
  few rows left to PyTorch, and why; bf16 ones of more rows computed in float32 on CPUs without native bf16
  (`native_bf16`).
- `attention`: one query per row (decode) folds each kv group's query heads into the query axis; causal attention
  under bf16 autocast on CPU runs eager up to EAGER_MAX_TOKENS and SDPA's flash kernel in float32 above.

No kernel changes process-global state (thread counts, backend switches, the environment): a server runs several
models in several threads, and a switch flipped by one model's forward changes the others' results.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vlbridge.devices import native_bf16 as device_native_bf16
from vlbridge.lm import native

THIN_ROWS = (4, 8)
"""Float32 CPU products of up to this many rows run as W @ x^T: (single-threaded, multi-threaded) (see `Linear`),
on CPUs where `thin_path_pays`. Up to 256 rows with several threads once: the products alone were faster so (a Xeon;
0.62-0.83x the time at 16-100 rows on an AVX-512 AMD EPYC too), but the transposed result they return sent a
prompt's attention to SDPA's slower math kernel and made the elementwise operations strided, and a SmolLM2-135M
prefill ran 1.09x (100 tokens) and 1.21x (30 tokens) faster without it on that EPYC (2 threads, alternating)."""


@cache
def thin_path_pays() -> bool:
    """Whether few-row float32 products run faster as W @ x^T than as MKL's x @ W^T on this CPU: on AVX-512 ones
    (measured on a 2-core Xeon, see `Linear`). On an AVX2-only AMD EPYC (Zen3) MKL's one-row GEMV was the faster,
    2.5-3x at SmolLM2-135M's layer shapes, single-threaded (experiments/thin_rows_avx2.py). Inference products take
    vlbridge's own kernel (`native`) before this path on both. A read of the CPU's capability, cached; nothing is
    switched."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


EMULATED_BF16_MAX_ROWS = 4
"""On CPUs without native bf16, bf16 products of more rows than this run in float32 (see `Linear`)."""


@cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (`vlbridge.devices.native_bf16`, the one test the trainer uses too),
    read once; elsewhere PyTorch emulates bf16 products."""
    return device_native_bf16(torch.device("cpu"))


def emulated_bf16_rows(rows: int) -> bool:
    """Whether a bf16 CPU product of `rows` rows is faster in float32 here: on CPUs without native bf16, from
    EMULATED_BF16_MAX_ROWS + 1 rows. On an AVX2-only AMD EPYC (Zen3), one thread, at SmolLM2-135M's shapes, PyTorch's
    bf16 product grew linearly with the rows (emulated one row at a time): casting x and W to float32 and back was
    0.7x as fast at 1-2 rows, even at 4, 1.4x at 8, 2-5x at 16 and 3-6x at 100 (a prompt)."""
    return rows > EMULATED_BF16_MAX_ROWS and not native_bf16()


EAGER_MAX_TOKENS = 176
"""Longest sequence `cpu_bf16_causal_attention` computes eagerly: fwd + bwd of one layer's attention (4 heads of 64,
bf16, 2 threads) ran 1.1-2.2x faster eager at 96-176 tokens, but 0.72-0.93x at 192-384, where SDPA's flash kernel
wins."""


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) with a faster path for few-row float32 products on CPU.

    MKL's x @ W^T for a handful of rows (a decode step has one row per sequence) runs far below memory bandwidth; the
    same product as W @ x^T, with a single row duplicated into two, streams W faster. Measured over a 130M model's
    decode products at one row: 36 -> 15 ms with two threads (2.4x), 36 -> 24 ms with one (1.5x); single-threaded
    it wins up to 4 rows, and it is kept to decode batches with several (THIN_ROWS). The result is a transposed view;
    gradients flow as usual. That was an AVX-512 Xeon; on AVX2-only CPUs the path is off (`thin_path_pays`).
    Inference products of up to `native.MAX_ROWS` rows, float32 or bf16 weights, run in `native` before either,
    wherever it runs: streaming SmolLM2-135M's decode weights at two threads took 0.43x the time of MKL's one-row
    product in float32 and 0.92x PyTorch's in bf16 on an AVX2-only AMD EPYC, 0.61x oneDNN's packed float32 product
    and 0.48x PyTorch's bf16 one on an AVX-512 AMD EPYC with native bf16 (experiments/decode_products.py;
    docs/benchmarks.md, "Real LLM speed").

    Elsewhere, bf16 products of one or two rows (decode at batch 1-2) go through PyTorch's own dispatch. They once ran
    with oneDNN switched off process-wide (`torch.backends.mkldnn.enabled`) for ATen's kernels, measured 2x faster than
    oneDNN's over a 130M model's decode products, but no per-call op reaches those kernels instead: linear, mm, addmm,
    mv, dot and bmm all consult that switch. On CPUs without AVX512-BF16 PyTorch gives one-row products to ATen's GEMV
    itself; there a decode step measured the same at batch 1 (the same kernels) and, at batch 2, 0.93x as fast for a
    130M model and 0.79x for the default LM (width 256), where oneDNN's fixed ~20 us a product outweighs its faster
    streaming. Products of more rows (a prompt) on such CPUs run in float32 (`emulated_bf16_rows`).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_autocast_enabled("cpu"):
            out = native.linear(x, self.weight, bias=self.bias)
            if out is not None:
                return out.to(x.dtype)
        rows = x.numel() // self.in_features
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and emulated_bf16_rows(rows):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(torch.bfloat16)
        limit = THIN_ROWS[1] if torch.get_num_threads() > 1 else THIN_ROWS[0]
        if x.dtype != torch.float32 or x.device.type != "cpu" or rows > limit or rows == 0 or not thin_path_pays():
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)  # (M, I)
        if rows == 1:
            flat = torch.cat((flat, flat))  # (2, I): a two-column GEMM instead of MKL's slow GEMV
        if self.bias is None:
            out = torch.mm(self.weight, flat.t())  # (O, M')
        else:
            out = torch.addmm(self.bias[:, None], self.weight, flat.t())  # (O, M')
        return out[:, :rows].t().reshape(*x.shape[:-1], self.out_features)  # (..., O), a strided view


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
    """Grouped-query attention of q (B, H, T, hd) over k, v (B, H_kv, S, hd) -> (B, H, T, hd).

    attn_mask: bool (B, 1, T, S), True = attend; None = causal when T > 1 (then S == T), every key when T == 1.
    SDPA, but with one query per row and grouped heads (decode) the query heads of each kv group are folded into the
    query axis, so attention runs on the H_kv cached heads without repeating them (no copy of the cache per step);
    and causal attention in bf16 on CPU takes `cpu_bf16_causal_attention`.
    """
    b, h, t, hd = q.shape
    kv_heads = k.shape[1]
    if t == 1 and kv_heads < h:
        folded = q.view(b, kv_heads, h // kv_heads, hd)  # (B, H_kv, G, hd)
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=attn_mask)  # (B, H_kv, G, hd)
        return out.view(b, h, 1, hd)  # (B, H, 1, hd)
    is_causal = attn_mask is None and t > 1
    if is_causal and q.device.type == "cpu" and _compute_dtype(q) == torch.bfloat16:
        return cpu_bf16_causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=kv_heads < h)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on `x` runs in: autocast's when it is on for `x`'s device (RoPE's float32 tables promote q
    and k back to float32 under autocast), else `x`'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def cpu_bf16_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention for bf16 autocast on CPU (training and prompt prefill): eager up to EAGER_MAX_TOKENS, above
    it SDPA's flash kernel in float32, returned in bf16.

    The float32 flash kernel is the faster one there (its bf16 backward is slow on CPU), and q and k already arrive in
    float32 (RoPE). The default recipe's instruct steps ran 1.10-1.13x as fast as with bf16 SDPA on every length
    (experiments/eager_attention.py); against eager with bf16 SDPA above the limit, the float32 kernel gained 1.07x.
    """
    if q.shape[2] <= EAGER_MAX_TOKENS:
        return eager_causal_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), is_causal=True, enable_gqa=k.shape[1] < q.shape[1]
        )
    return out.to(torch.bfloat16)


def eager_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal grouped-query attention as two matmuls and a float32 softmax (HF's "eager" attention).

    For bf16 training on CPU on sequences up to EAGER_MAX_TOKENS: there PyTorch's CPU flash kernel is the slower one
    at this LM's shapes (4 heads of 64), and the default recipe's caption steps run 1.20x faster this way
    (experiments/eager_attention.py). Scores are rounded to bf16 before the softmax, as in HF's eager path; the flash
    kernel keeps them in float32.
    """
    b, h, t, hd = q.shape
    kv = k.shape[1]
    q = q.reshape(b, kv, h // kv, t, hd)  # (B, H_kv, G, T, hd): each kv head serves its group without a copy
    scores = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2)) * hd**-0.5  # (B, H_kv, G, T, T)
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1, dtype=torch.float32).to(scores.dtype)
    return torch.matmul(probs, v.unsqueeze(2)).view(b, h, t, hd)  # (B, H, T, hd)
