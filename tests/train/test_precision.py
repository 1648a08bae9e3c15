"""Frozen parts keep the dtype they were loaded in during a stage, trained parts are float32 master weights, and the
frozen bf16 parts compute in float32: a connector-only stage on a bf16 base gives bitwise the losses and weights of the
same stage on a float32 copy of that base, in about half the memory, and gradients reach the connector through the
frozen bf16 LM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_run import align_stage, instruct_stage, recipe
from torch import nn

import vlbridge
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.train import recipe_from_dict, train
from vlbridge.train import trainer as trainer_module
from vlbridge.train.precision import UpcastFrozen, float32_masters, restore_untrained
from vlbridge.train.trainer import StageTrainer


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _bulk_dtypes(module: nn.Module) -> set[torch.dtype]:
    """The dtypes of the frozen Linear and Embedding weights (the bulk of the parameters) inside `module`."""
    bulk = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    return {m.weight.dtype for m in bulk if not m.weight.requires_grad}


def _bulk_elements(module: nn.Module) -> int:
    """How many parameters the Linear and Embedding layers inside `module` hold (weights and biases)."""
    bulk = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    return sum(p.numel() for p in {id(p): p for m in bulk for p in m.parameters()}.values())


def _run(tmp_path: Path, name: str, base: Path, data: Path, stages: list[dict], monkeypatch) -> list[dict]:
    """Train `stages` from `base`; per optimiser step, what the model held then (dtypes, bytes) and the loss."""
    seen: list[dict] = []
    real = StageTrainer._update

    def spy(self, *args):
        out = real(self, *args)
        model = self.model
        seen.append(
            {
                "model": model,
                "loss": out[0],
                "frozen": _bulk_dtypes(model.language_model) | _bulk_dtypes(model.vision_encoder),
                "trained": {p.dtype for p in model.parameters() if p.requires_grad},
                "frozen_bytes": _bytes(model.language_model) + _bytes(model.vision_encoder),
            }
        )
        return out

    monkeypatch.setattr(StageTrainer, "_update", spy)
    monkeypatch.setattr(trainer_module, "plot_loss", lambda *args, **kwargs: None)  # matplotlib: seconds, untested here
    run = recipe(tmp_path / name, data, None, stages, init_from=str(base))
    del run["model"]
    train(recipe_from_dict(run))
    monkeypatch.setattr(StageTrainer, "_update", real)
    return seen


@pytest.fixture
def bases(tiny_model, tiny_tokenizer_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny model saved in bf16, and the same values saved in float32."""
    tiny_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tiny_model.float().save_pretrained(tmp_path / "fp32")
    for folder in ("bf16", "fp32"):
        Tokenizer.from_dir(tiny_tokenizer_dir).save(tmp_path / folder)
    return tmp_path / "bf16", tmp_path / "fp32"


@pytest.mark.slow
def test_a_connector_stage_keeps_a_bf16_base_bf16_and_trains_as_on_float32(
    bases, tiny_data, tmp_path, monkeypatch
) -> None:
    low = _run(tmp_path, "low", bases[0], tiny_data, [align_stage(steps=2)], monkeypatch)
    full = _run(tmp_path, "full", bases[1], tiny_data, [align_stage(steps=2)], monkeypatch)
    assert all(s["frozen"] == {torch.bfloat16} and s["trained"] == {torch.float32} for s in low)  # inside the run
    assert all(s["frozen"] == {torch.float32} for s in full)
    bulk = sum(_bulk_elements(p) for p in (low[0]["model"].language_model, low[0]["model"].vision_encoder))
    assert low[0]["frozen_bytes"] == full[0]["frozen_bytes"] - 2 * bulk  # 2 bytes less for each bf16 element
    assert [s["loss"] for s in low] == [s["loss"] for s in full]  # bitwise: the same float32 arithmetic
    assert low[-1]["loss"] < low[0]["loss"]
    trained, reference = low[0]["model"].connector.state_dict(), full[0]["model"].connector.state_dict()
    assert all(torch.equal(trained[k], reference[k]) for k in reference)  # gradients reached it through bf16
    model = low[0]["model"]  # after the stage: plain forwards back, frozen parts as loaded
    assert all("forward" not in vars(m) for m in model.modules())
    assert {p.dtype for p in [*model.language_model.parameters(), *model.vision_encoder.parameters()]} == {
        torch.bfloat16
    }
    with safe_open(str(tmp_path / "low" / "align" / "model" / "model.safetensors"), framework="pt") as handle:
        assert all(key.startswith("connector.") for key in handle.keys())  # noqa: SIM118 (not iterable)
    with safe_open(str(tmp_path / "low" / "model.safetensors"), framework="pt") as handle:
        dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118
    assert {d for k, d in dtypes.items() if not k.startswith("connector.")} == {"BF16"}
    assert {d for k, d in dtypes.items() if k.startswith("connector.")} == {"F32"}


@pytest.mark.slow
def test_lora_on_a_bf16_base_trains_float32_adapters_and_merges_in_float32(
    bases, tiny_data, tmp_path, monkeypatch
) -> None:
    stages = [instruct_stage(lora=True, steps=2, max_length=200)]
    seen = _run(tmp_path, "lora", bases[0], tiny_data, stages, monkeypatch)
    assert all(s["frozen"] == {torch.bfloat16} and s["trained"] == {torch.float32} for s in seen)
    model = seen[0]["model"]
    q_proj = model.language_model.model.layers[0].self_attn.q_proj.weight
    assert q_proj.dtype == torch.float32  # merged: trained, float32
    assert model.language_model.model.layers[0].self_attn.o_proj.weight.dtype == torch.float32
    assert model.language_model.model.embed_tokens.weight.dtype == torch.bfloat16  # not a LoRA target
    loaded = vlbridge.load(tmp_path / "lora" / "instruct" / "model", dtype="stored")[0].state_dict()
    for name, tensor in model.state_dict().items():  # the chained stage model recomputes the float32 merge
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_upcast_frozen_computes_a_bf16_module_in_float32_and_restores_it() -> None:
    torch.manual_seed(0)  # embedding (frozen) -> linear (trained) -> linear, norm, linear (frozen): as a VLM's parts
    net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    frozen = [0, 2, 3, 4]
    for i in frozen:
        net[i].requires_grad_(False).to(torch.bfloat16)
    reference = copy.deepcopy(net).float()  # the same values in float32
    upcast = UpcastFrozen(net)
    assert net[2].weight.dtype == torch.bfloat16 and net[3].weight.dtype == torch.float32  # the norm: fp32 for now
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    net(ids).square().sum().backward()
    reference(ids).square().sum().backward()
    assert torch.equal(net[1].weight.grad, reference[1].weight.grad)  # through the bf16 layers, as through fp32
    assert all(net[i].weight.grad is None for i in frozen)
    net[1].weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a `bf16: true` stage: the linears compute in bf16
        out = net(ids)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert net[1].weight.grad.dtype == torch.float32 and net[1].weight.grad.abs().sum() > 0
    upcast.restore()
    assert [m.weight.dtype for m in net] == [torch.bfloat16, torch.float32] + [torch.bfloat16] * 3
    assert all("forward" not in vars(m) for m in net)
    net[1].bfloat16()  # trained parameters loaded in bf16: float32 masters; one left unchanged goes back to bf16
    masters = float32_masters(net[1].parameters())
    assert [p.dtype for p in net[1].parameters()] == [torch.float32] * 2
    with torch.no_grad():
        net[1].weight.add_(1e-3)
    restore_untrained(masters)
    assert (net[1].weight.dtype, net[1].bias.dtype) == (torch.float32, torch.bfloat16)
