"""Warmup + cosine: exact values at the end of warmup, the middle of the decay and the end; resumable state."""

from __future__ import annotations

import math

import pytest
import torch

from vlbridge.errors import ConfigError
from vlbridge.train.schedule import WarmupCosine, build_scheduler, warmup_steps


def test_factor_at_key_points() -> None:
    f = WarmupCosine(total=110, warmup=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # the first update already moves: 1/10 of the peak
    assert f(9) == pytest.approx(1.0)  # the last warmup step runs at the peak
    assert f(10) == pytest.approx(1.0)  # the decay starts at the peak
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay: the midpoint
    assert f(110) == pytest.approx(0.1)  # the end: the floor
    assert f(500) == pytest.approx(0.1)  # past the end it stays there
    assert all(f(s) >= f(s + 1) for s in range(10, 120))  # monotone decay


def test_scheduler_scales_every_group_and_resumes() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.1}])
    sched = build_scheduler(opt, total=20, warmup=4)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[3] == pytest.approx([1.0, 0.1])
    assert seen[0] == pytest.approx([0.25, 0.025])
    mid = 0.5 * (1 + math.cos(math.pi * 5 / 16))
    assert seen[9] == pytest.approx([mid, 0.1 * mid])
    opt2 = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.1}])
    sched2 = build_scheduler(opt2, total=20, warmup=4)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_warmup_steps_and_errors() -> None:
    assert warmup_steps(100, 0.05) == 5
    assert warmup_steps(1, 0.5) == 0  # a one-step run cannot warm up
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError):
        build_scheduler(opt, total=0, warmup=0)
    with pytest.raises(ConfigError):
        build_scheduler(opt, total=5, warmup=5)
