"""Device names: one resolver behind every --device flag, the recipe's device and the APIs that take one; a device
this machine does not have is a ConfigError listing the ones it has."""

from __future__ import annotations

import platform

import pytest
import torch

from vlbridge.cli.main import main
from vlbridge.devices import available_devices, native_bf16, resolve_device
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


# (machine, avx512_bf16, amx_tile, oneDNN's bf16 check) of each CPU kind -> whether bf16 compute is native there
CPU_KINDS = {
    "avx2_only": ("x86_64", False, False, False, False),  # AMD EPYC Zen3: bf16 emulated, ~140x slower matmuls
    "avx512_without_bf16": ("x86_64", False, False, True, False),  # Xeon Skylake/Cascade Lake: oneDNN says yes, 4.5x
    "avx512_bf16": ("x86_64", True, False, True, True),  # AMD EPYC Zen4, Cooper Lake
    "amx": ("AMD64", False, True, True, True),  # Sapphire Rapids (AMX tiles; Windows spells the machine AMD64)
    "arm_bf16": ("aarch64", False, False, True, True),  # Graviton3: oneDNN's check reads the ARM bf16 extension
    "arm_without_bf16": ("aarch64", False, False, False, False),
}


@pytest.mark.parametrize("kind", sorted(CPU_KINDS))
def test_native_bf16_reads_the_cpus_real_bf16_capability(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    machine, avx512_bf16, amx, onednn, expected = CPU_KINDS[kind]
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert native_bf16(torch.device("cpu")) is expected


def test_native_bf16_on_gpus_asks_cuda_and_elsewhere_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert native_bf16(torch.device("cuda", 0)) is supported
    assert native_bf16(torch.device("meta")) is False
