"""Device names: the one resolver behind every `--device` flag, the recipe's `device` and the APIs that take one.

torch takes the name of any device type it knows (`cuda`, `xpu`, `cuda:7`) and fails only when a tensor first goes
there, with an AssertionError ("Torch not compiled with CUDA enabled") or a RuntimeError, after a model was loaded or
a run's files written. Each name is resolved here first, against the devices this machine has, so a device it lacks
is a ConfigError listing those it has, before any work.

`native_bf16` is the one place that decides whether bf16 compute pays on a device: where it is emulated, a bf16
stage falls back to fp32.
"""

from __future__ import annotations

import platform

import torch

from vlbridge.errors import ConfigError

AUTO = "auto"
"""The name that picks the first CUDA GPU where there is one, else the CPU."""


def available_devices() -> list[str]:
    """The device names this machine runs: cpu; cuda and cuda:0 ... cuda:N-1 where CUDA GPUs are visible; mps where
    an Apple GPU is."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device `name` names: `auto`, or one of `available_devices()` (a torch device is checked the same
    way); anything else raises ConfigError listing the devices this machine has."""
    name = str(name)
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = [AUTO, *available_devices()]
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; use one of {', '.join(choices)}") from None
    if device.type != "cpu" and str(device) not in choices:
        raise ConfigError(f"device {name!r} is not on this machine; use one of {', '.join(choices)}")
    return device


X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
"""`platform.machine()` names (lower-cased) of x86 CPUs, where torch's x86 capability probes apply."""


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively on `device`: a CUDA GPU that supports bf16; an x86 CPU with avx512_bf16 or
    AMX tiles; an ARM CPU with the bf16 extension (oneDNN's own check there).

    On x86, oneDNN's `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is not the test: it is true on any AVX-512 CPU,
    where oneDNN emulates bf16 through fp32. There a bf16 matmul ran 4.5x slower than fp32 (a Xeon with avx512f but
    no avx512_bf16), and on an AVX2-only AMD EPYC, where it is emulated too, at ~1 GFLOP/s against ~140 for fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if platform.machine().lower() in X86_MACHINES:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
