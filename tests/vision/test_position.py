"""Position encodings: 2D RoPE scores depend only on the relative 2D offset; learned tables resize bicubically."""

from __future__ import annotations

import torch

from vlbridge.vision.position import apply_rotary, interpolate_learned, rope2d_cos_sin


def _scores(grid_h: int, grid_w: int, head_dim: int = 16) -> torch.Tensor:
    """q.k for one fixed q and k vector placed at every patch: (grid_h, grid_w, grid_h, grid_w)."""
    torch.manual_seed(0)
    q, k = torch.randn(2, head_dim, dtype=torch.float64)
    cos, sin = (t.double() for t in rope2d_cos_sin(grid_h, grid_w, head_dim))
    n = grid_h * grid_w
    rq = apply_rotary(q.expand(n, -1), cos, sin)  # (N, D)
    rk = apply_rotary(k.expand(n, -1), cos, sin)  # (N, D)
    return (rq @ rk.T).view(grid_h, grid_w, grid_h, grid_w)


def test_rope2d_scores_depend_only_on_relative_2d_offset():
    scores = _scores(5, 6)
    by_offset: dict[tuple[int, int], float] = {}
    for r1 in range(5):
        for c1 in range(6):
            for r2 in range(5):
                for c2 in range(6):
                    key = (r2 - r1, c2 - c1)
                    value = scores[r1, c1, r2, c2].item()
                    by_offset.setdefault(key, value)
                    assert abs(by_offset[key] - value) < 1e-5, key  # cos/sin are float32
    # ...and on both components of the offset (rows and columns each get rotary dims)
    assert abs(by_offset[(0, 0)] - by_offset[(1, 0)]) > 1e-3
    assert abs(by_offset[(0, 0)] - by_offset[(0, 1)]) > 1e-3
    assert abs(by_offset[(1, 0)] - by_offset[(0, 1)]) > 1e-3


def test_rope2d_is_a_rotation_that_splits_rows_and_columns():
    cos, sin = rope2d_cos_sin(3, 4, 8)
    x = torch.randn(12, 8)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    # patch (0, 0) is not rotated; dims 0 and 4 (first quarter pair) turn with the row only, 2 and 6 with the column
    torch.testing.assert_close(apply_rotary(x, cos, sin)[0], x[0])
    angle_row1 = torch.atan2(sin[4], cos[4])  # patch (row 1, col 0)
    assert angle_row1[0] != 0 and angle_row1[2] == 0
    angle_col1 = torch.atan2(sin[1], cos[1])  # patch (row 0, col 1)
    assert angle_col1[0] == 0 and angle_col1[2] != 0


def test_interpolate_learned_keeps_native_grid_and_resizes_others():
    weight = torch.randn(16, 4)
    assert interpolate_learned(weight, 4, 4) is weight
    constant = torch.ones(16, 4) * 3
    resized = interpolate_learned(constant, 6, 3)
    assert resized.shape == (18, 4)
    torch.testing.assert_close(resized, torch.full((18, 4), 3.0))
