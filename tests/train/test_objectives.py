"""Objectives: causal-LM and text-LM losses equal their definitions; the contrastive loss learns (with a learnable
temperature); region classification learns what is where; gradient checkpointing changes no gradient."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from vlbridge.data.collate import collate
from vlbridge.data.datasets import ImageTextDataset, collate_image_text
from vlbridge.data.llava_json import load_llava
from vlbridge.data.regions import RegionDataset, collate_regions, load_regions
from vlbridge.errors import ConfigError
from vlbridge.model.processor import processor_for
from vlbridge.train.objectives import (
    CausalLMObjective,
    ContrastiveObjective,
    RegionObjective,
    TextLMObjective,
    TrainStep,
    build_objective,
    region_pool,
)
from vlbridge.train.trainer import set_lm_gradient_checkpointing


def _contrastive_batch(model, tokenizer, data, n: int = 8) -> dict:
    records = load_llava(data / "captions.json").items[:n]
    pairs = ImageTextDataset(records, data, processor_for(model, tokenizer), max_length=48)
    return collate_image_text([pairs[i] for i in range(len(pairs))], pad_token_id=tokenizer.pad_token_id)


def test_text_lm_loss_is_next_token_cross_entropy_without_padding(tiny_model) -> None:
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    batch = collate([{"input_ids": ids[0], "labels": ids[0]}, {"input_ids": ids[1, :4], "labels": ids[1, :4]}], 0)
    out = TextLMObjective()(tiny_model, {k: v for k, v in batch.items() if k != "labels"})
    logits = tiny_model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    targets = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)[:, 1:]
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, want) and out.tokens == 10


def test_causal_lm_objective_is_the_models_loss(tiny_model) -> None:
    ids = torch.randint(0, 50, (1, 8))
    labels = ids.masked_fill(torch.arange(8) < 4, -100)
    out = CausalLMObjective()(tiny_model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    assert torch.allclose(out.loss, tiny_model(input_ids=ids, labels=labels).loss, atol=1e-6)


def test_contrastive_loss_decreases_and_temperature_learns(tiny_model, tiny_tokenizer, tiny_data) -> None:
    torch.manual_seed(0)
    batch = _contrastive_batch(tiny_model, tiny_tokenizer, tiny_data)
    objective = build_objective("contrastive", tiny_model)
    assert isinstance(objective, ContrastiveObjective)
    assert objective.temperature == pytest.approx(0.07)
    tiny_model.language_model.requires_grad_(False)  # the LM reads the captions; the ViT learns to match it
    params = [*tiny_model.vision_encoder.parameters(), *objective.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3)
    step = TrainStep(tiny_model, objective)
    losses = []
    for _ in range(60):
        out = step(batch)
        out.loss.backward()
        assert objective.head.logit_scale.grad is not None and objective.head.logit_scale.grad != 0
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert losses[0] == pytest.approx(math.log(8), abs=0.5)  # near chance at the start
    assert losses[-1] < 0.5 * losses[0]
    assert objective.temperature != pytest.approx(0.07, abs=1e-4)  # it moved: the temperature is learnt
    assert set(objective.parts()) == {"contrastive_head"}


def test_contrastive_loss_is_symmetric_infonce(tiny_model, tiny_tokenizer, tiny_data) -> None:
    batch = _contrastive_batch(tiny_model, tiny_tokenizer, tiny_data, n=4)
    objective = build_objective("contrastive", tiny_model)
    with torch.no_grad():
        out = objective(tiny_model, batch)
        img = objective.embed_images(tiny_model, batch["pixel_values"])
        txt = objective.embed_texts(tiny_model, batch["input_ids"], batch["attention_mask"])
        logits = img @ txt.t() / 0.07
        target = torch.arange(4)
        want = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(out.loss, want, atol=1e-5)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4)) and torch.allclose(txt.norm(dim=-1), torch.ones(4))


def test_region_pool_averages_each_regions_patches() -> None:
    features = torch.arange(36.0).view(1, 36, 1)  # a 6x6 patch grid, value = patch index
    pooled = region_pool(features, 3)  # each region is a 2x2 block
    assert pooled.shape == (1, 9, 1)
    assert pooled[0, 0, 0] == (0 + 1 + 6 + 7) / 4 and pooled[0, 8, 0] == (28 + 29 + 34 + 35) / 4
    with pytest.raises(ConfigError, match="multiple of 3"):
        region_pool(torch.zeros(1, 16, 1), 3)


def test_regions_objective_learns_what_is_where(tiny_model, tiny_tokenizer, tiny_data) -> None:
    torch.manual_seed(0)
    processor = processor_for(tiny_model, tiny_tokenizer).image_processor
    dataset = RegionDataset(load_regions(tiny_data / "regions.jsonl").items, tiny_data, processor)
    batch = collate_regions([dataset[i] for i in range(len(dataset))])
    objective = build_objective("regions", tiny_model, dataset)
    assert isinstance(objective, RegionObjective) and set(objective.parts()) == {"region_heads"}
    assert list(objective.heads) == ["colour", "kind", "position", "shape", "size", "word"]
    assert objective.heads["kind"].out_features == 3
    labels = batch["region_labels"]

    def accuracy(names: set[str]) -> float:
        with torch.no_grad():
            logits = objective.logits(tiny_model, batch["pixel_values"])
        hits = [
            (out.argmax(-1) == labels[:, i])[labels[:, i] >= 0]
            for i, (name, out) in enumerate(logits.items())
            if name in names
        ]
        return torch.cat(hits).float().mean().item()

    content = set(objective.heads) - {"position"}
    before = accuracy(content)
    opt = torch.optim.AdamW([*tiny_model.vision_encoder.parameters(), *objective.parameters()], lr=3e-3)
    step = TrainStep(tiny_model, objective)
    losses = []
    for _ in range(60):
        out = step(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert out.tokens == int((labels >= 0).sum())
    assert losses[-1] < 0.3 * losses[0]
    assert before < 0.5 and accuracy(content) > 0.9
    assert accuracy({"position"}) > 0.3  # chance 1/9; the tiny ViT learns where a region is more slowly (0.46 here)


def test_regions_objective_needs_region_labels(tiny_model) -> None:
    with pytest.raises(ConfigError, match="data_format: regions"):
        build_objective("regions", tiny_model)


def test_gradient_checkpointing_changes_no_gradient(tiny_model) -> None:
    ids = torch.randint(10, 50, (2, 12), generator=torch.Generator().manual_seed(0))  # no special ids
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    token = tiny_model.config.image_token_id
    ids[:, 1:10] = token  # 9 visual tokens per 48 px image
    keys = list(tiny_model.state_dict())

    def grads() -> dict[str, torch.Tensor]:
        tiny_model.zero_grad()
        tiny_model(input_ids=ids, pixel_values=pixels, labels=ids.masked_fill(ids == token, -100)).loss.backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    plain = grads()
    set_lm_gradient_checkpointing(tiny_model.language_model, True)
    tiny_model.vision_encoder.gradient_checkpointing = True
    checkpointed = grads()
    assert list(tiny_model.state_dict()) == keys
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-7) for k in plain)
    set_lm_gradient_checkpointing(tiny_model.language_model, False)
    assert all("forward" not in vars(layer) for layer in tiny_model.language_model.model.layers)
