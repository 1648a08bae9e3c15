"""INT8 weight-only linear layers: the quantiser's bounds, and Int8Linear against the float product of the
dequantised weight on both its paths (PyTorch's int8 kernel, and dequantising where that kernel is wrong)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlbridge.atomic import ALIGNMENT
from vlbridge.lm.int8 import (
    PACK_ALIGNMENT,
    PACK_K_MULTIPLE,
    Int8Embedding,
    Int8Linear,
    align_weights,
    int8_skeleton,
    quantize_linears,
    quantize_weight,
)


def test_quantize_weight_is_symmetric_per_row_within_half_a_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    w[3] = 0.0
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (24,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert torch.equal(q.abs().amax(1)[[0, 1, 2]], torch.full((3,), 127, dtype=torch.int8))
    assert scale[3] == 1.0 and not q[3].any()
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


def test_a_weight_stored_transposed_quantises_to_a_row_major_int8_weight() -> None:
    """A float weight may be an (out, in) view of (in, out) storage (a transposed copy, another tool's layout); the
    int8 kernels need their weight row-major, so quantising such a model must still give a working Int8Linear."""
    torch.manual_seed(0)
    linear = nn.Linear(PACK_K_MULTIPLE * 2, 8, bias=False)
    linear.weight.data = linear.weight.data.t().contiguous().t()
    q, scale = quantize_weight(linear.weight)
    assert q.is_contiguous() and torch.equal(q, quantize_weight(linear.weight.contiguous())[0])
    model = nn.Sequential(linear)
    assert quantize_linears(model) == 1
    x = torch.randn(1, PACK_K_MULTIPLE * 2)
    torch.testing.assert_close(model(x), x @ (q.float() * scale[:, None]).T, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("in_features", [PACK_K_MULTIPLE * 3, 24])  # the int8 kernel's path, the dequantising one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 12])  # decode (native kernel on x86); a prompt, dequantised to float32 where
# bf16 is emulated
def test_int8_linear_matches_the_dequantised_product(in_features: int, dtype: torch.dtype, rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 37)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(2, rows, in_features).to(dtype)
    dequantised = layer.weight.float() * layer.weight_scale[:, None]
    expected = x.float() @ dequantised.t() + linear.bias.detach()
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, rows, 37) and out.dtype == dtype
    # bf16 activations (the kernel's, or the input's) round each product term to ~3 significant digits
    assert (out.float() - expected).abs().max() <= 1e-2 * expected.abs().max()
    with torch.no_grad():
        float_out = linear(x.float())
    # against the float layer: int8 weights add at most half a step per weight, ~1% of the output here
    assert (out.float() - float_out).abs().max() <= 3e-2 * float_out.abs().max()


def test_a_weight_off_the_int8_kernels_boundary_dequantises_and_align_weights_copies_it() -> None:
    """PyTorch's int8 kernel crashed the process on a weight off a 16-byte boundary (an AVX-512 CPU), as a weight
    mapped from a checkpoint file can be: such a layer must dequantise instead, and loading copies it onto one."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(PACK_K_MULTIPLE * 2, 24))
    aligned = layer.weight
    storage = torch.zeros(aligned.numel() + PACK_ALIGNMENT, dtype=torch.int8)
    layer.weight = storage[4 : 4 + aligned.numel()].view_as(aligned).copy_(aligned)  # 4 bytes off the boundary
    x = torch.randn(12, PACK_K_MULTIPLE * 2)  # more rows than the native kernel takes: PyTorch's product path
    with torch.no_grad():
        off = layer(x)
        model = nn.Sequential(layer)
        assert align_weights(model) == 1 and align_weights(model) == 0
        assert layer.weight.data_ptr() % ALIGNMENT == 0 and torch.equal(layer.weight, aligned)
        torch.testing.assert_close(off, layer(x), rtol=1e-2, atol=1e-2)  # bf16 activations on the kernel's path


def test_quantize_linears_swaps_every_linear_and_skeleton_matches_its_state_dict() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Sequential(nn.Linear(32, 16, bias=False)))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert quantize_linears(model) == 2
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    state = model.state_dict()
    assert state["0.weight"].dtype == torch.int8 and state["0.weight"].shape == shapes["0.weight"]
    assert state["2.0.weight_scale"].shape == (16,) and "2.0.bias" not in state
    empty = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Sequential(nn.Linear(32, 16, bias=False)))
    assert int8_skeleton(empty) == 2
    empty.load_state_dict(state)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(empty(x), model(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_embedding_is_the_dequantised_row_lookup_over_the_heads_table(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = Int8Linear.from_linear(nn.Linear(16, 50, bias=False)).to(dtype)  # the scales follow the float dtype
    embedding = Int8Embedding.tied_to(head)
    assert embedding.weight is head.weight and embedding.weight_scale is head.weight_scale
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    expected = (head.weight.to(dtype) * head.weight_scale[:, None])[ids]  # (2, 3, 16)
    out = embedding(ids)
    assert out.dtype == dtype and torch.equal(out, expected)
