"""Decode in vlbridge's own AVX2 kernels, `native.c`, built once per machine with the C compiler: few-row products
(`linear`) and all decoder layers of a step for one new token per row (`decode_stack`).

A decode step multiplies one activation row by every weight of the LM, so its time is the weight bytes read. On an
AVX2-only CPU PyTorch's kernels leave most of the memory bandwidth unused: MKL's float32 one-row product streams at
about half of it, PyTorch's bf16 product at a third of float32's rate in bytes, and its int8 weight-only kernel
(`_weight_int8pack_mm`) is compute-bound at a quarter (docs/benchmarks.md, "INT8 decode"). `native.c` widens
float32, bf16 or int8 weights to float32 in registers and streams each weight once, split over the threads torch
uses, so bf16 and int8 weights decode at the speed of their bytes. Eager PyTorch also spends a fixed few microseconds
on each of a layer's ~25 operations, which at SmolLM2-135M's size was as long as the products themselves;
`decode_stack` runs all of a step's layers in one call.

The library is compiled from the shipped source with `$CC` (default `cc`) on first use into the user's cache folder
(`vlbridge.cache_dir`), named by a hash of the source, the flags and the compiler, and loaded with ctypes (which
drops the GIL during a call, so server threads decode in parallel). It links the OpenMP runtime torch already loaded.
Where it cannot be used (a CPU without AVX2 and FMA, or no working compiler: one warning says why and how to fix
it), `linear` returns None and the caller runs PyTorch's product. `status()` says which.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlbridge.atomic import atomic_path
from vlbridge.cache_dir import cache_dir
from vlbridge.devices import X86_MACHINES

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-lm")
MAX_ROWS = 8
"""Products of up to this many rows (a decode step at batch <= MAX_ROWS) take the kernel; more rows (a prompt) are
matrix products, where MKL's blocked GEMM is the faster."""
_KERNEL_BY_DTYPE = {torch.float32: "gemv_f32", torch.bfloat16: "gemv_bf16", torch.int8: "gemv_i8"}
"""Weight dtype -> the kernel that reads it."""


def _cpu_supported() -> str | None:
    """None if the kernels run on this CPU, else why not: they are x86 AVX2 + FMA code (torch's AVX2 or AVX512
    capability implies both). Measured faster than PyTorch's products on AVX2-only CPUs and on an AVX-512 one with
    native bf16 (docs/benchmarks.md, "Real LLM speed")."""
    if platform.machine().lower() not in X86_MACHINES:
        return f"the kernels are x86 AVX2 code and this CPU is {platform.machine()}"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2" and not capability.startswith("AVX512"):
        return f"this CPU lacks AVX2/FMA (torch reports capability {capability})"
    return None


def _build(compiler: str) -> Path:
    """The compiled library in the cache folder, compiled now (atomically, so concurrent builds are safe) if absent."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"native-{key}.so"
    if not target.is_file():
        with atomic_path(target) as tmp:
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, check=True)
    return target


@cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded kernel library, its path) or (None, why it is off); built and warned about once per process."""
    unsupported = _cpu_supported()
    if unsupported is not None:
        return None, unsupported
    compiler = os.environ.get("CC") or "cc"
    try:
        path = _build(compiler)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        reason = f"building {SOURCE.name} with {compiler!r} failed: {detail.strip()[-500:]}"
        warnings.warn(
            f"vlbridge's native decode kernels are off ({reason}); decoding falls back to PyTorch's slower products. "
            f"They need a C compiler (install gcc, or point $CC at one) and a writable cache folder ({cache_dir()}; "
            "$VLBRIDGE_CACHE_DIR moves it).",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, reason
    return library, str(path)


@cache
def _kernels() -> dict[torch.dtype | str, Any]:
    """Weight dtype -> the library's product for it, and "decode_stack" -> the layers (ctypes functions); {} where the
    library is off."""
    library = _library()[0]
    if library is None:
        return {}
    kernels = {}
    for dtype, name in _KERNEL_BY_DTYPE.items():
        kernel = getattr(library, name)
        kernel.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int]
        kernel.restype = None
        kernels[dtype] = kernel
    stack = library.decode_stack
    stack.argtypes = [ctypes.c_void_p] + [ctypes.c_long] * 7 + [ctypes.c_void_p] * 3 + [ctypes.c_float]
    stack.argtypes += [ctypes.c_void_p] * 2 + [ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_long]
    stack.argtypes += [ctypes.c_void_p, ctypes.c_int]
    stack.restype = ctypes.c_int
    kernels["decode_stack"] = stack
    return kernels


def status() -> str:
    """Whether the native kernels are in use on this machine: 'on (<library path>)' or 'off: <why>'."""
    library, detail = _library()
    return f"on ({detail})" if library is not None else f"off: {detail}"


def linear(x: Tensor, weight: Tensor, scale: Tensor | None = None, bias: Tensor | None = None) -> Tensor | None:
    """x (..., I) @ weight (O, I)^T, times `scale` (O,) per output channel (int8 weights), plus `bias` (O,), in the
    native kernel: float32 (..., O), or None where the kernel does not apply (then the caller runs PyTorch's product).

    It applies to CPU inference of float32 or bf16 activations over at most MAX_ROWS rows, with a contiguous float32,
    bf16 or int8 weight and contiguous scale and bias (read in float32); never where autograd records (the kernel
    has no backward). The checks are ordered cheapest first: a decode step calls this ~200 times."""
    kernel = _kernels().get(weight.dtype)
    if kernel is None or x.device.type != "cpu" or not weight.is_contiguous():
        return None
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    if not 0 < rows <= MAX_ROWS or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return None
    if x.dtype != torch.float32:
        if x.dtype != torch.bfloat16:
            return None
        x = x.float()
    x = x.contiguous()
    scale = None if scale is None else scale.to(torch.float32).contiguous()
    bias = None if bias is None else bias.to(torch.float32).contiguous()
    out = x.new_empty((*x.shape[:-1], out_features))
    kernel(
        x.data_ptr(),
        weight.data_ptr(),
        None if scale is None else scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
        rows,
        in_features,
        out_features,
        torch.get_num_threads(),
    )
    return out


WEIGHT_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
"""A projection's weight dtype -> its code in native.c."""
CACHE_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    """Whether the native kernels run here (an AVX2 x86-64 CPU and a built library)."""
    return bool(_kernels())


def projection_table(projections: list[tuple[Tensor, Tensor | None, Tensor | None]]) -> ctypes.Array:
    """`native.c`'s proj_t array for a layer's projections: (weight (out, in) contiguous float32/bf16/int8, float32
    scale or None, float32 bias or None) for q, k, v, o, gate, up and down. It holds raw pointers: the caller keeps
    the tensors alive and unchanged in place of storage while it uses the table."""
    table = []
    for weight, scale, bias in projections:
        table += [weight.data_ptr(), 0 if scale is None else scale.data_ptr()]
        table += [0 if bias is None else bias.data_ptr(), WEIGHT_CODES[weight.dtype]]
    return (ctypes.c_int64 * len(table))(*table)


def decode_stack(
    x: Tensor,
    tables: list[ctypes.Array],
    norms: list[Tensor],
    caches: list[Tensor],
    shape: tuple[int, int, int],
    eps: float,
    rope: tuple[Tensor, Tensor],
    keys: tuple[Tensor, int, Tensor | None],
) -> None:
    """Run every pre-norm Llama block (SiLU MLP) of an LM on x (rows, D) float32 contiguous, in place, for one new
    token per row: `native.c`'s decode_stack.

    tables: each layer's `projection_table`; norms: each layer's two RMSNorm weights in turn, float32 contiguous;
    caches: each layer's key and value buffers in turn, (rows, kv_heads, max_len, hd), contiguous, all float32 or
    all bf16; shape: (heads, ffn width, head dim); rope: (cos, signed sin) (rows, hd) float32 contiguous; keys:
    (write_at, length, key_mask): row r's new key and value are written at position write_at[r] (int64 (rows,)),
    then it attends positions [0, length) except those key_mask (uint8 (rows, length), contiguous) zeroes (None:
    all). The caller checks every condition (`fused_decode.fused_decode_stack`)."""
    rows, d = x.shape
    heads, ffn, hd = shape
    kv_heads, max_len = caches[0].shape[1:3]
    write_at, length, key_mask = keys
    pointer_array = ctypes.c_void_p * len(caches)
    status = _kernels()["decode_stack"](
        x.data_ptr(),
        len(tables),
        rows,
        d,
        heads,
        kv_heads,
        hd,
        ffn,
        (ctypes.c_void_p * len(tables))(*(ctypes.addressof(table) for table in tables)),
        pointer_array(*(norm.data_ptr() for norm in norms)),
        pointer_array(*(cache.data_ptr() for cache in caches)),
        eps,
        rope[0].data_ptr(),
        rope[1].data_ptr(),
        int(caches[0].dtype == torch.bfloat16),
        max_len,
        write_at.data_ptr(),
        length,
        None if key_mask is None else key_mask.data_ptr(),
        torch.get_num_threads(),
    )
    if status:
        raise MemoryError("native decode_stack could not allocate its scratch memory")
