"""Device names: one resolver behind every --device flag, the recipe's device and the APIs that take one; a device
this machine does not have is a ConfigError listing the ones it has."""

from __future__ import annotations

import pytest
import torch

from vlbridge.cli.main import main
from vlbridge.devices import available_devices, resolve_device
from vlbridge.errors import ConfigError
from vlbridge.model.io import default_model_dir


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_names_of_devices_this_machine_has(no_gpu) -> None:
    assert available_devices() == ["cpu"]
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_gpus_by_index(two_gpus) -> None:
    assert available_devices() == ["cpu", "cuda", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"^device 'cuda:2' is not on this machine; use one of auto, cpu, cuda, "):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "device 'cuda' is not on this machine; use one of auto, cpu"),
        ("cuda:0", "device 'cuda:0' is not on this machine; use one of auto, cpu"),
        ("mps", "device 'mps' is not on this machine; use one of auto, cpu"),
        ("banana", "device 'banana' is not a device name; use one of auto, cpu"),
        ("", "device '' is not a device name; use one of auto, cpu"),
        ("xpu", "device 'xpu' is not on this machine; use one of auto, cpu"),
    ],
)
def test_a_device_this_machine_lacks_is_named_with_those_it_has(no_gpu, name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_device(name)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "argv",
    [
        ["chat", "--device", "banana", "hello"],
        ["chat", "--device", "cuda", "hello"],
        ["eval", "text-retention", "--base", "{model}", "--model", "{model}", "--data", "{text}", "--device", "cuda:3"],
        ["bench", "profile", "llava-v1.5-7b", "--measure", "--device", "cuda"],
    ],
)
def test_every_device_flag_reports_a_missing_device_in_one_line(no_gpu, argv: list[str], tmp_path, capsys) -> None:
    text = tmp_path / "held_out.txt"
    text.write_text("A held-out line of text.\n")
    assert main([arg.format(model=default_model_dir(), text=text) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlbridge: error: device ") and "use one of auto, cpu" in err and err.count("\n") == 1
