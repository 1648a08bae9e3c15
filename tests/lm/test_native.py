"""vlbridge's native decode kernels: the products equal PyTorch's (float32, bf16 and int8 weights, any width and
row count they take), the library is built once into the cache folder, and a failed build is a warning naming the
fix, never a crash (PyTorch's products run instead)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from vlbridge.cache_dir import CACHE_ENV
from vlbridge.lm import native
from vlbridge.lm.int8 import quantize_weight

needs_native = pytest.mark.skipif(native._cpu_supported() is not None, reason="the kernels run on x86 CPUs with AVX2")


@pytest.fixture
def fresh_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache folder and no library loaded yet; the process's library is restored afterwards."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    native._library.cache_clear()
    native._kernels.cache_clear()
    yield tmp_path
    native._library.cache_clear()
    native._kernels.cache_clear()


@needs_native
def test_the_kernels_are_on_wherever_the_cpu_runs_them() -> None:
    """On an AVX2 CPU with the C compiler the README's set-up installs, decode must not silently lose its kernels."""
    assert native.available(), native.status()
    assert native.status().startswith("on (")


@pytest.mark.parametrize(
    ("machine", "capability", "runs"),
    [
        ("x86_64", "AVX2", True),
        ("x86_64", "AVX512", True),  # measured faster there too (docs/benchmarks.md, "Real LLM speed")
        ("AMD64", "AVX512", True),
        ("x86_64", "DEFAULT", False),  # no AVX2/FMA
        ("aarch64", "DEFAULT", False),
    ],
)
def test_the_kernels_run_on_x86_cpus_with_avx2_avx512_ones_included(
    machine: str, capability: str, runs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native.platform, "machine", lambda: machine)
    monkeypatch.setattr(native.torch.backends.cpu, "get_cpu_capability", lambda: capability)
    reason = native._cpu_supported()
    assert (reason is None) == runs
    if not runs:
        assert capability in reason or machine in reason


SHAPES = [(1, 576, 192), (3, 37, 13), (8, 8, 5), (2, 1, 3), (5, 45, 7), (4, 576, 33)]
"""(rows, in_features, out_features) of the product tests."""


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize(("rows", "in_features", "out_features"), SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_products_equal_pytorch(dtype: torch.dtype, rows: int, in_features: int, out_features: int, bias: bool) -> None:
    """Widths below, at and past the vector loops' multiples of 32, 16 and 8 (the scalar tails), one to MAX_ROWS
    rows (blocks of 4 rows and the rows after them); int8 against its dequantised weight, bf16 against its float32
    widening."""
    torch.manual_seed(rows * in_features)
    weight, b = torch.randn(out_features, in_features), torch.randn(out_features) if bias else None
    x = torch.randn(rows, in_features)
    scale = None
    if dtype == torch.int8:
        weight, scale = quantize_weight(weight)
        expected = F.linear(x, weight.float() * scale[:, None], b)
    else:
        weight = weight.to(dtype)
        expected = F.linear(x, weight.float(), b)
    out = native.linear(x, weight, scale, b)
    assert out is not None and out.dtype == torch.float32 and out.shape == (rows, out_features)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * in_features**0.5)


@needs_native
def test_bf16_activations_and_leading_dims_are_taken() -> None:
    torch.manual_seed(0)
    weight, x = torch.randn(24, 40), torch.randn(2, 1, 40).bfloat16()
    out = native.linear(x, weight)
    assert out is not None and out.shape == (2, 1, 24)
    torch.testing.assert_close(out, F.linear(x.float(), weight), rtol=1e-5, atol=1e-4)


def test_inputs_the_kernel_does_not_take_fall_back() -> None:
    """None (PyTorch's product then runs) for more rows than MAX_ROWS, autograd, another weight dtype, a weight not
    row-major, and float16 activations."""
    weight, x = torch.randn(24, 40), torch.randn(1, 40)
    assert native.linear(torch.randn(native.MAX_ROWS + 1, 40), weight) is None
    assert native.linear(x.clone().requires_grad_(), weight) is None
    assert native.linear(x, weight.half()) is None
    assert native.linear(x, weight.t().contiguous().t()) is None
    assert native.linear(x.half(), weight) is None
    with torch.no_grad():
        assert (native.linear(x.clone().requires_grad_(), weight) is None) != native.available()


@needs_native
def test_the_library_is_built_once_into_the_cache_folder(fresh_library: Path) -> None:
    assert native.available()
    built = list((fresh_library / "kernels").glob("native-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._library.cache_clear()
    native._kernels.cache_clear()
    assert native.available() and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


@needs_native
def test_a_failed_build_warns_with_the_fix_and_decode_falls_back(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", os.fspath(fresh_library / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="They need a C compiler"):
        assert not native.available()
    assert native.status().startswith("off: building native.c")
    assert native.linear(torch.randn(1, 8), torch.randn(4, 8)) is None
