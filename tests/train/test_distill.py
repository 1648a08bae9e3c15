"""The distill objective: its loss against a hand computation, the teacher's logits lined up with the student's on the
supervised positions (also when the two take different numbers of visual tokens per image), alpha=0 being exactly the
plain next-token loss, the recipe's checks, and a tiny distillation run whose loss falls."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_MODEL, make_tokenizer, recipe, stage

from vlbridge.config import ModelConfig, from_dict
from vlbridge.data.collate import SupervisedDataset, collate
from vlbridge.data.llava_json import load_llava
from vlbridge.errors import CheckpointError, ConfigError, DataError
from vlbridge.lm.int8 import Int8Linear
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train import recipe_from_dict, train
from vlbridge.train.objectives import CausalLMObjective, build_objective, distill_loss
from vlbridge.train.objectives.distill import respan_images
from vlbridge.train.pipeline import check_run, fit_config


def _model(tokenizer: Tokenizer, seed: int, **vision: int) -> VisionLanguageModel:
    """A tiny VLM (seeded) fitted to `tokenizer`; `vision` overrides the vision section (e.g. patch_size)."""
    torch.manual_seed(seed)
    spec = {**TINY_MODEL, "vision": {**TINY_MODEL["vision"], **vision}}
    return VisionLanguageModel(fit_config(from_dict(ModelConfig, spec), tokenizer, "chatml"))


def _save(model: VisionLanguageModel, tokenizer: Tokenizer, path: Path) -> str:
    model.processor = processor_for(model, tokenizer)
    model.save_pretrained(path)
    return str(path)


def _batch(model: VisionLanguageModel, tokenizer: Tokenizer, data: Path, n: int = 4) -> dict[str, torch.Tensor]:
    """The first `n` caption samples as `model`'s processor makes them, collated (right-padded)."""
    records = load_llava(data / "captions.json").items[:n]
    dataset = SupervisedDataset(records, data, processor_for(model, tokenizer), "plain", 256)
    return collate([dataset[i] for i in range(len(dataset))], pad_token_id=0)


def _stage(tmp_path: Path, **distill: object) -> object:
    """A distill StageRecipe (through the recipe reader) with `distill` options."""
    spec = recipe(tmp_path / "run", tmp_path, None, [_distill_stage(**distill)])
    return recipe_from_dict(spec).stages[0]


def _distill_stage(**distill: object) -> dict:
    parts, lr = {"connector": "full", "language_model": "full"}, {"connector": 1e-2, "language_model": 1e-2}
    return stage("distil", "distill", "instruct.json", parts, lr, distill=distill)


def test_the_loss_matches_a_hand_computation() -> None:
    # T = 2: the teacher's [2 ln 3, 0] softens to [3/4, 1/4]; the student's [0, 0] to [1/2, 1/2]; the target is 0.
    student, teacher = torch.zeros(1, 2), torch.tensor([[2 * math.log(3), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = 0.5 * 2**2 * kl + 0.5 * math.log(2)  # alpha * T^2 * KL + (1 - alpha) * CE
    got = distill_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.5)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_the_loss_averages_over_positions_and_sums_over_the_vocabulary() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    targets, t, alpha = [2, 1], 3.0, 0.3

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(x) for x in row]
        return [e / sum(exps) for e in exps]

    kl = ce = 0.0
    for s_row, t_row, target in zip(student.tolist(), teacher.tolist(), targets, strict=True):
        p_s, p_t = softmax([x / t for x in s_row]), softmax([x / t for x in t_row])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True)) / 2
        ce += -math.log(softmax(s_row)[target]) / 2
    got = distill_loss(student, teacher, torch.tensor(targets), temperature=t, alpha=alpha)
    assert got.item() == pytest.approx(alpha * t * t * kl + (1 - alpha) * ce, abs=1e-6)
    with pytest.raises(DataError, match="must share the tokenizer"):
        distill_loss(student, teacher[:, :2], torch.tensor(targets), temperature=t, alpha=alpha)


def test_alpha_zero_is_exactly_the_plain_next_token_loss(tiny_tokenizer, tiny_data, tmp_path) -> None:
    student = _model(tiny_tokenizer, 0)
    teacher = _save(_model(tiny_tokenizer, 1), tiny_tokenizer, tmp_path / "teacher")
    batch = _batch(student, tiny_tokenizer, tiny_data)
    objective = build_objective("distill", student, None, _stage(tmp_path, teacher=teacher, alpha=0.0))
    assert torch.equal(objective(student, batch).loss, CausalLMObjective()(student, batch).loss)


def test_the_kl_term_is_that_of_both_models_full_logits_at_the_label_positions(
    tiny_tokenizer, tiny_data, tmp_path
) -> None:
    student, teacher_model = _model(tiny_tokenizer, 0), _model(tiny_tokenizer, 1)
    teacher = _save(teacher_model, tiny_tokenizer, tmp_path / "teacher")
    batch = _batch(student, tiny_tokenizer, tiny_data)
    objective = build_objective("distill", student, None, _stage(tmp_path, teacher=teacher, alpha=1.0, temperature=2.0))
    assert not objective.teacher.model.training
    assert not any(p.requires_grad for p in objective.teacher.model.parameters())
    assert list(objective.parameters()) == []  # the teacher is not part of the stage's module tree
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        s_logits, t_logits = student(**inputs).logits, teacher_model(**inputs).logits  # (B, T, V)
    supervised = batch["labels"][:, 1:] != IGNORE_INDEX  # (B, T-1): position t predicts label t+1
    s_log = (s_logits[:, :-1][supervised] / 2).log_softmax(-1)
    t_log = (t_logits[:, :-1][supervised] / 2).log_softmax(-1)
    expected = 4 * (t_log.exp() * (t_log - s_log)).sum(-1).mean()
    assert objective(student, batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_teacher_with_more_visual_tokens_sees_its_own_sequence(tiny_tokenizer, tiny_data, tmp_path) -> None:
    student = _model(tiny_tokenizer, 0)  # 48 px, 16 px patches: 9 visual tokens per image
    teacher_model = _model(tiny_tokenizer, 1, patch_size=8)  # 36
    teacher = _save(teacher_model, tiny_tokenizer, tmp_path / "teacher")
    student_batch = _batch(student, tiny_tokenizer, tiny_data)
    teacher_batch = _batch(teacher_model, tiny_tokenizer, tiny_data)
    assert teacher_batch["input_ids"].shape[1] == student_batch["input_ids"].shape[1] + 27
    objective = build_objective("distill", student, None, _stage(tmp_path, teacher=teacher))
    respanned = respan_images(student_batch, student.config.image_token_id, 9, 36)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(respanned[key], teacher_batch[key]), key
    shifted = student_batch["labels"][:, 1:]
    targets = shifted[shifted != IGNORE_INDEX]  # (N,) the supervised tokens, row by row
    with torch.no_grad():
        own, own_targets = teacher_model.supervised_logits(**teacher_batch)
    assert torch.equal(own_targets, targets)
    assert torch.allclose(objective.teacher_logits(student_batch, student.config.image_token_id, targets), own)
    with pytest.raises(DataError, match="do not line up"):
        objective.teacher_logits(student_batch, student.config.image_token_id, targets.roll(1))
    objective(student, student_batch).loss.backward()  # and the student trains through it
    assert student.connector.parameters().__next__().grad is not None


def test_teachers_that_cannot_teach_the_student_are_refused(tiny_tokenizer, tiny_data, tmp_path) -> None:
    student = _model(tiny_tokenizer, 0)
    other = Tokenizer.from_dir(make_tokenizer(tiny_data, tmp_path / "tok", 300))
    wrong_vocab = _save(_model(other, 1), other, tmp_path / "vocab")
    with pytest.raises(ConfigError, match="must share the tokenizer"):
        build_objective("distill", student, None, _stage(tmp_path, teacher=wrong_vocab))
    config = _model(tiny_tokenizer, 1).config
    pixels = replace(config.image_processor, image_mean=[0.0, 0.0, 0.0])
    bad_pixels = _save(VisionLanguageModel(replace(config, image_processor=pixels)), tiny_tokenizer, tmp_path / "px")
    with pytest.raises(ConfigError, match="preprocesses images differently"):
        build_objective("distill", student, None, _stage(tmp_path, teacher=bad_pixels))


def test_an_int8_teacher_is_loaded_quantised_and_teaches(tiny_tokenizer, tiny_data, tmp_path) -> None:
    student = _model(tiny_tokenizer, 0)
    teacher = _save(_model(tiny_tokenizer, 1), tiny_tokenizer, tmp_path / "teacher")
    objective = build_objective("distill", student, None, _stage(tmp_path, teacher=teacher, teacher_dtype="int8"))
    assert any(isinstance(m, Int8Linear) for m in objective.teacher.model.modules())
    assert torch.isfinite(objective(student, _batch(student, tiny_tokenizer, tiny_data)).loss)


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"temperature": 0.0}, r"distill.temperature is 0.0"),
        ({"alpha": 1.5}, r"distill.alpha is 1.5"),
        ({"alpha": -0.1}, r"distill.alpha is -0.1"),
        ({"teacher_dtype": "int4"}, r"distill.teacher_dtype is 'int4'; choose one of fp32, bf16, int8"),
        ({"temprature": 2.0}, r"temprature"),
    ],
)
def test_bad_distill_options_are_config_errors(tmp_path, distill, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _stage(tmp_path, **distill)


def test_the_distill_section_goes_with_the_distill_objective_only(tmp_path) -> None:
    without = {k: v for k, v in _distill_stage().items() if k != "distill"}
    with pytest.raises(ConfigError, match="goes with objective: distill and only with it"):
        recipe_from_dict(recipe(tmp_path / "run", tmp_path, None, [without]))
    misplaced = {**_distill_stage(), "objective": "causal_lm"}
    with pytest.raises(ConfigError, match="the stage's objective is causal_lm"):
        recipe_from_dict(recipe(tmp_path / "run", tmp_path, None, [misplaced]))


def test_a_missing_teacher_is_reported_before_the_run_starts(tiny_data, tiny_tokenizer_dir, tmp_path) -> None:
    spec = recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, [_distill_stage(teacher=str(tmp_path / "none"))])
    with pytest.raises(CheckpointError, match=r"distill.teacher .* does not exist"):
        check_run(recipe_from_dict(spec))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_tiny_student_distils_from_a_tiny_teacher_and_its_loss_falls(
    tiny_tokenizer, tiny_tokenizer_dir, tiny_data, tmp_path
) -> None:
    teacher = _save(_model(tiny_tokenizer, 1), tiny_tokenizer, tmp_path / "teacher")
    distil = {**_distill_stage(teacher=teacher, alpha=0.5, temperature=2.0), "steps": 8}
    run = train(recipe_from_dict(recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, [distil])))
    rows = [json.loads(line) for line in (run / "distil" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[-1]["loss"] < rows[0]["loss"]
    assert (run / "config.json").is_file()
