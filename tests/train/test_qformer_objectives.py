"""BLIP-2 stage 1 (objective `qformer`): each loss's attention mask, hard negatives, learning, and a real stage that
leaves the frozen vision encoder and LM bitwise unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tiny_run
import torch

import vlbridge
from vlbridge.config import ModelConfig, from_dict
from vlbridge.data.datasets import ImageTextDataset, collate_image_text
from vlbridge.data.llava_json import load_llava
from vlbridge.errors import ConfigError, DataError
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives import TrainStep, build_objective
from vlbridge.train.objectives.qformer import QFormerObjective, qformer_mask, sample_negatives
from vlbridge.train.pipeline import fit_config, train
from vlbridge.train.recipe import StageRecipe, recipe_from_dict
from vlbridge.train.trainer import StageTrainer, seed_everything

QFORMER_MODEL = {**tiny_run.TINY_MODEL, "connector": {"name": "qformer", "options": {"num_queries": 4}}}


@pytest.fixture
def model(tiny_tokenizer) -> VisionLanguageModel:
    torch.manual_seed(0)
    return VisionLanguageModel(fit_config(from_dict(ModelConfig, QFORMER_MODEL), tiny_tokenizer, "chatml"))


def _pairs(model, tokenizer, data: Path, n: int = 8) -> ImageTextDataset:
    records = load_llava(data / "captions.json").items[:n]
    return ImageTextDataset(records, data, processor_for(model, tokenizer), max_length=48)


def _batch(model, tokenizer, data: Path, n: int = 8) -> dict:
    pairs = _pairs(model, tokenizer, data, n)
    return collate_image_text([pairs[i] for i in range(len(pairs))], pad_token_id=tokenizer.pad_token_id)


def _setup(model, tokenizer, data: Path, n: int = 4):
    objective = build_objective("qformer", model).eval()
    assert isinstance(objective, QFormerObjective)
    batch = _batch(model, tokenizer, data, n)
    features = model.vision_encoder(batch["pixel_values"])
    return objective, model.connector.eval(), features, batch["input_ids"], batch["attention_mask"]


def test_masks_say_who_sees_whom() -> None:
    q, t = 2, 3  # one row: 2 queries, then 2 real text tokens and 1 pad
    text_mask = torch.tensor([[1, 1, 0]])
    uni, bi, causal = (
        qformer_mask(q, text_mask, mode)[0, 0].int().tolist() for mode in ("unimodal", "bidirectional", "causal")
    )
    assert uni == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert bi == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert causal == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert qformer_mask(q, text_mask, "causal").shape == (1, 1, q + t, q + t)


def test_itc_text_features_ignore_the_image_and_image_features_ignore_the_text(
    model, tiny_tokenizer, tiny_data
) -> None:
    objective, connector, features, ids, mask = _setup(model, tiny_tokenizer, tiny_data)
    with torch.no_grad():
        image, text = objective.itc_features(connector, features, ids, mask)
        other_image, same_text = objective.itc_features(connector, features.flip(0), ids, mask)
        same_image, other_text = objective.itc_features(connector, features, ids.flip(0), mask.flip(0))
    assert image.shape == (4, 4, 256) and text.shape == (4, 256)
    assert torch.allclose(text, same_text, atol=1e-6) and not torch.allclose(image, other_image)
    assert torch.allclose(image, same_image, atol=1e-6) and not torch.allclose(text, other_text)
    logits = objective.itc_logits(image, text)
    want = torch.einsum("iqe,je->ijq", image, text).amax(-1) / 0.07
    assert torch.allclose(logits, want, atol=1e-5)


def test_itm_queries_and_text_see_each_other(model, tiny_tokenizer, tiny_data) -> None:
    objective, connector, features, ids, mask = _setup(model, tiny_tokenizer, tiny_data)
    with torch.no_grad():
        logits = objective.itm_logits(connector, features, ids, mask)
        other_text = objective.itm_logits(connector, features, ids.flip(0), mask.flip(0))
        other_image = objective.itm_logits(connector, features.flip(0), ids, mask)
        padded = objective.itm_logits(connector, features, ids.masked_fill(mask == 0, 7), mask)
    assert logits.shape == (4, 2)
    assert not torch.allclose(logits, other_text) and not torch.allclose(logits, other_image)
    assert bool((mask == 0).any()) and torch.allclose(logits, padded, atol=1e-6)  # padding is hidden


def test_hard_negatives_are_never_the_positive_and_follow_the_similarity() -> None:
    gen = torch.Generator().manual_seed(0)
    similarity = 50 * torch.eye(5) + torch.randn(5, 5, generator=gen)  # the positive is by far the most similar
    similarity[0, 3] = 40.0  # image 0's hardest negative is caption 3
    draws = torch.stack([sample_negatives(similarity, gen) for _ in range(200)])  # (200, 5)
    assert not bool((draws == torch.arange(5)).any())
    assert bool((draws[:, 0] == 3).all())
    assert set(draws[:, 1].tolist()) != {draws[0, 1].item()}  # others are drawn, not fixed
    two = sample_negatives(torch.tensor([[9.0, -9.0], [-9.0, 9.0]]), gen)
    assert two.tolist() == [1, 0]


def test_itg_text_is_causal_queries_never_see_text(model, tiny_tokenizer, tiny_data) -> None:
    objective, connector, features, ids, mask = _setup(model, tiny_tokenizer, tiny_data)
    k = 3
    changed = ids.clone()
    changed[:, k] = (ids[:, k] + 1) % model.config.language_model.vocab_size
    with torch.no_grad():
        logits = objective.itg_logits(connector, features, ids, mask)
        later = objective.itg_logits(connector, features, changed, mask)
        other_image = objective.itg_logits(connector, features.flip(0), ids, mask)
    assert logits.shape == (4, ids.shape[1], model.config.language_model.vocab_size)
    assert torch.allclose(logits[:, : k + 1], later[:, : k + 1], atol=1e-6)  # predicting ids[:k+1] ignores ids[k]
    assert not torch.allclose(logits[:, k + 1], later[:, k + 1])
    assert not torch.allclose(logits[:, 0], other_image[:, 0])  # text sees the queries from the first token on


def _fit(model, objective, batch, steps: int, lr: float = 3e-3) -> list[float]:
    """Train the Q-Former and the objective's parts (vision encoder and LM frozen); the loss of every step."""
    model.vision_encoder.requires_grad_(False)
    model.language_model.requires_grad_(False)
    opt = torch.optim.AdamW([*model.connector.parameters(), *objective.parameters()], lr=lr, weight_decay=0.0)
    step, losses = TrainStep(model, objective), []
    for _ in range(steps):
        out = step(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    return losses


def test_stage_one_losses_fall_with_only_the_qformer_trainable(model, tiny_tokenizer, tiny_data) -> None:
    torch.manual_seed(0)
    batch = _batch(model, tiny_tokenizer, tiny_data, n=4)
    objective = build_objective("qformer", model)
    assert set(objective.parts()) == {"qformer_text", "qformer_heads"}
    with torch.no_grad():
        torch.manual_seed(1)
        first = {k: float(v) for k, v in objective.losses(model, batch).items()}
        torch.manual_seed(1)  # the same hard negatives: the objective's loss is the sum of the three
        out = TrainStep(model, objective)(batch)
    assert float(out.loss) == pytest.approx(sum(first.values()), rel=1e-6)
    assert out.tokens == int(batch["attention_mask"].sum())
    assert first["itc"] == pytest.approx(math.log(4), abs=0.05) and first["itm"] < 1.0  # near chance
    losses = _fit(model, objective, batch, steps=10, lr=1e-2)
    with torch.no_grad():
        last = {k: float(v) for k, v in objective.losses(model, batch).items()}
    assert losses[-1] < 0.8 * losses[0] and last["itg"] < 0.75 * first["itg"]


def test_itc_alone_aligns_images_and_captions(model, tiny_tokenizer, tiny_data) -> None:
    torch.manual_seed(0)
    batch = _batch(model, tiny_tokenizer, tiny_data, n=6)
    objective = QFormerObjective(model.connector, model.config.language_model.vocab_size, weights=(1.0, 0.0, 0.0))
    losses = _fit(model, objective, batch, steps=40)
    assert losses[-1] < 0.7 * losses[0]
    assert float(objective.temperature.detach()) != pytest.approx(0.07, abs=1e-4)  # the temperature is learnt


def test_wrong_models_and_batches_are_typed_errors(model, tiny_model, tiny_tokenizer, tiny_data) -> None:
    with pytest.raises(ConfigError, match=r"connector: \{name: qformer\}"):
        build_objective("qformer", tiny_model)  # an mlp connector
    objective = build_objective("qformer", model)
    batch = _batch(model, tiny_tokenizer, tiny_data, n=3)
    with pytest.raises(ConfigError, match="at least 2 image-caption pairs"):
        objective(model, {k: v[:1] for k, v in batch.items()})
    left_padded = batch["attention_mask"].clone()
    left_padded[0, :2] = 0
    with pytest.raises(DataError, match="right-padded"):
        objective(model, {**batch, "attention_mask": left_padded})
    with pytest.raises(ConfigError, match="not conversation batches"):
        objective(model, {**batch, "labels": batch["input_ids"]})


def test_stage_one_trainer_run_leaves_vision_and_lm_bitwise(model, tiny_tokenizer, tiny_data, tmp_path) -> None:
    stage = from_dict(
        StageRecipe,
        tiny_run.stage("qformer", "qformer", "captions.json", {"connector": "full"}, {"connector": 1e-3}, steps=3),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = _pairs(model, tiny_tokenizer, tiny_data, n=8)
    collate = lambda b: collate_image_text(b, pad_token_id=tiny_tokenizer.pad_token_id)  # noqa: E731
    result = StageTrainer(stage, model, pairs, collate, tmp_path, seed=0).run()
    assert result.steps == 3 and result.loss is not None
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(("vision_encoder.", "language_model.")):
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["connector.query_tokens"], before["connector.query_tokens"])
    assert not torch.equal(
        after["connector.layer.0.crossattention.attention.key.weight"],
        before["connector.layer.0.crossattention.attention.key.weight"],
    )


def test_stage_one_recipe_run(tiny_data, tiny_tokenizer_dir, tiny_tokenizer, tmp_path) -> None:
    stages = [
        tiny_run.stage("qformer", "qformer", "captions.json", {"connector": "full"}, {"connector": 1e-3}, steps=2)
    ]
    recipe = recipe_from_dict(
        tiny_run.recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, stages, model=QFORMER_MODEL)
    )
    run_dir = train(recipe)
    seed_everything(recipe.seed)
    start = VisionLanguageModel(fit_config(recipe.model, tiny_tokenizer, "chatml")).state_dict()
    trained, _ = vlbridge.load(str(run_dir))
    end = trained.state_dict()
    assert all(torch.equal(end[k], v) for k, v in start.items() if not k.startswith("connector."))
    assert not torch.equal(end["connector.query_tokens"], start["connector.query_tokens"])
