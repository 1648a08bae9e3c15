"""Device names: the one resolver behind every `--device` flag, the recipe's `device` and the APIs that take one.

torch takes the name of any device type it knows (`cuda`, `xpu`, `cuda:7`) and fails only when a tensor first goes
there, with an AssertionError ("Torch not compiled with CUDA enabled") or a RuntimeError, after a model was loaded or
a run's files written. Each name is resolved here first, against the devices this machine has, so a device it lacks
is a ConfigError listing those it has, before any work.
"""

from __future__ import annotations

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
