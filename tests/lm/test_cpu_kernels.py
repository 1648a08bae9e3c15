"""The decoder's CPU kernels: each equals the plain path it stands in for, takes the inputs it was measured on, and
no forward changes process-global state (a bf16 decode in one thread leaves another thread's model bit-identical)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.nn import functional as F

from tiny_vlm import TINY_LM
from vlbridge.config import VisionConfig
from vlbridge.lm import DecoderLM, cpu_kernels, native
from vlbridge.lm.cpu_kernels import THIN_ROWS, Linear, attention, eager_causal_attention
from vlbridge.vision import ViT

CFG = TINY_LM


@pytest.fixture(scope="module")
def model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(CFG).eval()


@pytest.mark.parametrize("rows", [1, 3, THIN_ROWS[1] + 1])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_fast_path_equals_f_linear(rows: int, bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernels, "thin_path_pays", lambda: True)  # taken on AVX-512 CPUs; tested on every CPU
    torch.manual_seed(rows)
    layer = Linear(24, 40, bias=bias)
    x = torch.randn(1, rows, 24, requires_grad=True)
    out = layer(x)
    assert out.shape == (1, rows, 40)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(1, rows, 24), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pays", [False, True])
def test_linear_takes_the_thin_path_only_where_it_pays(pays: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-row float32 products go to W @ x^T (torch.mm) where `thin_path_pays`, else to the native kernel (or
    F.linear where it is off)."""
    calls = []
    monkeypatch.setattr(cpu_kernels, "thin_path_pays", lambda: pays)
    monkeypatch.setattr(cpu_kernels.torch, "mm", lambda *a: calls.append("mm") or torch.matmul(*a))
    Linear(24, 40, bias=False)(torch.randn(1, 1, 24))
    assert calls == (["mm"] if pays else [])


@pytest.mark.parametrize("rows", [1, native.MAX_ROWS, native.MAX_ROWS + 1])
def test_few_row_float32_inference_products_take_the_native_kernel_on_avx2_cpus(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the native kernels run, inference products of up to native.MAX_ROWS rows take native.linear (equal to
    F.linear within float32 rounding); more rows, autograd and autocast keep PyTorch's products."""
    calls = []
    kernel = native.linear

    def counted(*args: object, **kwargs: object) -> torch.Tensor | None:
        out = kernel(*args, **kwargs)
        calls.extend([] if out is None else [out])
        return out

    monkeypatch.setattr(native, "linear", counted)
    torch.manual_seed(rows)
    layer = Linear(40, 24, bias=True)
    x = torch.randn(rows, 40)
    with torch.no_grad():
        out = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    layer(x.requires_grad_()).sum().backward()  # autograd: PyTorch's product, whose backward runs
    assert len(calls) == (1 if rows <= native.MAX_ROWS and native.available() else 0)


@pytest.mark.parametrize("hardware", [False, True])
@pytest.mark.parametrize("rows", [1, cpu_kernels.EMULATED_BF16_MAX_ROWS + 1])
def test_bf16_products_of_many_rows_run_in_float32_where_bf16_is_emulated(
    hardware: bool, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without native bf16 a prompt's bf16 product is float32's, rounded once; decode's few rows and native CPUs keep
    PyTorch's bf16 product (where vlbridge's native kernel does not take them: tested below)."""
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: hardware)
    monkeypatch.setattr(native, "linear", lambda *args, **kwargs: None)  # PyTorch's products only
    torch.manual_seed(rows)
    layer = Linear(24, 40, bias=True).to(torch.bfloat16)
    x = torch.randn(1, rows, 24, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    if hardware or rows <= cpu_kernels.EMULATED_BF16_MAX_ROWS:
        assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    else:
        assert torch.equal(out, F.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16))


@pytest.mark.skipif(not native.available(), reason="vlbridge's native kernels do not run on this CPU")
def test_one_row_bf16_products_take_the_native_kernel_on_avx2_cpus() -> None:
    """bf16 weights widened to float32 in the kernel: float32's product of the same values, rounded once to bf16
    (the sums run in another order, so a result may land one bf16 step away)."""
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=True).to(torch.bfloat16)
    x = torch.randn(1, 1, 24, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
    assert out.dtype == torch.bfloat16
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=2**-7, atol=1e-6)  # one bf16 rounding step at most


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_one_query_attention_equals_sdpa(kv_heads: int, masked: bool) -> None:
    """Decode's folded query heads give SDPA's grouped-query attention over the cache, with or without padding."""
    torch.manual_seed(kv_heads)
    q = torch.randn(3, 1, 4, 16).transpose(1, 2)  # (B, H, 1, hd), strided as the layer's
    k, v = (torch.randn(3, kv_heads, 9, 16) for _ in range(2))
    mask = torch.rand(3, 1, 1, 9) > 0.3 if masked else None
    if mask is not None:
        mask[..., -1] = True  # the query's own key, as padding_mask keeps it
    out = attention(q, k, v, mask)
    assert out.shape == (3, 4, 1, 16)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads < 4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_eager_causal_attention_equals_sdpa(kv_heads: int) -> None:
    torch.manual_seed(kv_heads)
    q = torch.randn(3, 4, 17, 8, requires_grad=True)
    k, v = (torch.randn(3, kv_heads, 17, 8, requires_grad=True) for _ in range(2))
    eager = eager_causal_attention(q.transpose(2, 3).transpose(2, 3), k, v)  # a non-contiguous q, as the layer's
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads < 4)
    torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(eager.square().sum(), (q, k, v))
    torch.testing.assert_close(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_forward_takes_the_eager_path_up_to_its_length_limit(
    model: DecoderLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[torch.dtype] = []

    def recorded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = eager_causal_attention(q, k, v)
        calls.append(out.dtype)
        return out

    monkeypatch.setattr(cpu_kernels, "eager_causal_attention", recorded)
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    with torch.no_grad():
        ref = model(ids)
        assert calls == []  # float32: the SDPA kernel
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(ids)
    assert calls == [torch.bfloat16] * CFG.num_hidden_layers  # q arrives in float32 (RoPE), the matmuls run in bf16
    assert (fast.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    monkeypatch.setattr(cpu_kernels, "EAGER_MAX_TOKENS", ids.shape[1] - 1)
    sdpa_dtypes: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention

    def recorded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sdpa_dtypes.append(v.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(cpu_kernels.F, "scaled_dot_product_attention", recorded_sdpa)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        long = model(ids)
    assert len(calls) == CFG.num_hidden_layers  # longer sequences: the flash kernel, in float32
    assert sdpa_dtypes == [torch.float32] * CFG.num_hidden_layers
    torch.testing.assert_close(long, fast, rtol=0.05, atol=0.05 * float(ref.abs().max()))


def test_bf16_decode_leaves_backend_switches_alone(model: DecoderLM) -> None:
    """One or two rows in bf16 (decode at batch 1-2) run with oneDNN as enabled as before, during and after; the
    results agree with the batched and float32 ones to bf16 rounding."""
    lm = DecoderLM(CFG).eval()
    lm.load_state_dict(model.state_dict())
    lm = lm.to(torch.bfloat16)
    flags: list[bool] = []
    hooks = {1: lambda h: flags.append(torch.backends.mkldnn.enabled) or h}
    ids = torch.randint(0, CFG.vocab_size, (4, 1))
    with torch.no_grad():
        one = torch.cat([lm(ids[i : i + 1], hooks=hooks) for i in range(4)])
        two = torch.cat([lm(ids[i : i + 2], hooks=hooks) for i in (0, 2)])
        batch = lm(ids, hooks=hooks)
        ref = model(ids)
    assert flags == [True] * 7 and torch.backends.mkldnn.enabled
    scale = ref.abs().max()
    assert (one - batch).abs().max() <= 0.02 * scale and (two - batch).abs().max() <= 0.02 * scale
    assert (one - ref).abs().max() <= 0.05 * scale


def greedy(lm: DecoderLM, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy ids (B, steps) after `prompt` (B, T), through prefill and one decode_step per token."""
    b, t = prompt.shape
    cache = lm.new_cache(b, t + steps)
    mask = torch.ones(b, t + steps, dtype=torch.long)
    out = [lm.prefill(cache, mask[:, :t], input_ids=prompt).argmax(-1, keepdim=True)]
    for i in range(t, t + steps - 1):
        out.append(lm.decode_step(cache, out[-1], mask[:, : i + 1]).argmax(-1, keepdim=True))
    return torch.cat(out, dim=1)


def test_bf16_decode_in_one_thread_leaves_a_float32_model_in_another_bit_identical() -> None:
    """A server's models share the process: while a bf16 LM decodes, a float32 ViT (whose patch convolution runs on
    oneDNN when enabled) computes exactly what it computes alone, and so does the decode."""
    torch.manual_seed(0)
    vit = ViT(
        VisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        )
    ).eval()
    lm = DecoderLM(CFG).eval().to(torch.bfloat16)
    pixels = torch.randn(2, 3, 16, 16)
    prompt = torch.randint(0, CFG.vocab_size, (1, 4), generator=torch.Generator().manual_seed(1))
    steps = 32
    decodes: list[torch.Tensor] = []
    started = threading.Event()

    def decode() -> None:
        with torch.no_grad():
            started.set()
            decodes.append(greedy(lm, prompt, steps))

    with torch.no_grad():
        features, ids = vit(pixels), greedy(lm, prompt, steps)
        forwards = changed = 0
        for _ in range(20):
            started.clear()
            thread = threading.Thread(target=decode)
            thread.start()
            started.wait()
            outputs = [vit(pixels)]
            while thread.is_alive():
                outputs.append(vit(pixels))
            thread.join()
            changed += sum(not torch.equal(out, features) for out in outputs)
            forwards += len(outputs)
    assert changed == 0, f"{changed} of {forwards} float32 forwards changed while a bf16 model decoded"
    assert len(decodes) == 20 and all(torch.equal(d, ids) for d in decodes)
