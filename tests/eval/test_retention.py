"""Text-ability retention: exact perplexity, the comparison's verdicts, QA scoring and the deployment memory probe."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import vlbridge
from vlbridge.config import LMConfig, ModelConfig, VisionConfig
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval.retention import (
    answer_questions,
    compare,
    deployment_memory,
    first_line,
    first_sentence,
    load_qa,
    perplexity,
    relative_difference,
    windows,
    within,
)
from vlbridge.eval.vqa import normalize_answer
from vlbridge.lm.tokenizer_train import train_tokenizer
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision.vit import ViT

CORPUS = [
    "the red circle sits left of the blue square",
    "how many objects are there? there are three objects",
    "what colour is the triangle? the triangle is green",
    "a small yellow star above a large purple diamond",
] * 3
HELD_OUT = "the green square sits above three red circles. how many stars are there? two small stars. " * 3
LM = LMConfig(
    vocab_size=1,  # set to the tokenizer's size
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
# A vision tower far larger than the LM, so the text-only saving stands out of resident-memory noise.
VISION = VisionConfig(
    hidden_size=256, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
)


def _save(model: VisionLanguageModel, tokenizer, path: Path) -> Path:
    model.processor = processor_for(model, tokenizer)
    model.save_pretrained(path)
    return path


def write_checkpoints(root: Path) -> dict[str, Path]:
    """A base text LLM, a VLM whose LM is the base's exact weights, a VLM with a perturbed LM, the held-out text and
    a QA file whose answers are half the base model's own greedy answers (so its accuracy is 0.5)."""
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, template="chatml")
    lm = replace(LM, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    base = VisionLanguageModel(ModelConfig(language_model=lm, vision=None))
    paths = {"base": _save(base, tokenizer, root / "base")}
    vlm_config = ModelConfig(language_model=lm, vision=VISION, image_token_id=tokenizer.token_to_id("<image>"))
    vlm = VisionLanguageModel(vlm_config)
    vlm.language_model.load_state_dict(base.language_model.state_dict())
    paths["vlm"] = _save(vlm, tokenizer, root / "vlm")
    with torch.no_grad():
        vlm.language_model.lm_head.weight.add_(0.5 * torch.randn_like(vlm.language_model.lm_head.weight))
    paths["perturbed"] = _save(vlm, tokenizer, root / "perturbed")
    paths["text"] = root / "held_out.txt"
    paths["text"].write_text(HELD_OUT)
    questions = ["how many objects are there?", "what colour is the triangle?", "where is the star?", "what is red?"]
    model, processor = vlbridge.load(paths["base"])
    inputs = processor(text=[processor.apply_chat_template([{"role": "user", "content": q}]) for q in questions])
    ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    own = [first_sentence(text) for text in processor.batch_decode(ids)]  # what a chat answer is scored on
    assert all(normalize_answer(text) for text in own), own
    answers = [own[0], own[1], own[2] + " zebra", "no such answer"]
    paths["qa"] = root / "qa.jsonl"
    paths["qa"].write_text(
        "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, answers, strict=True))
    )
    return paths


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    return write_checkpoints(tmp_path_factory.mktemp("retention"))


def test_windows_predict_every_token_once() -> None:
    ids = list(range(10, 20))
    assert windows(ids, 4, bos_id=1) == [[1, 10, 11, 12], [1, 13, 14, 15], [1, 16, 17, 18], [1, 19]]
    assert windows(ids, 4, bos_id=None) == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
    assert windows(list(range(9)), 4, bos_id=None) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a lone last token predicts nothing
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        windows(ids, 1, bos_id=None)


@pytest.mark.parametrize("bos", [True, False])
def test_perplexity_is_exp_of_the_mean_nll(ckpts: dict[str, Path], bos: bool) -> None:
    model, processor = vlbridge.load(ckpts["base"])
    tokenizer = processor.tokenizer
    ids = tokenizer.encode(HELD_OUT, add_special_tokens=False)
    window = 20
    assert tokenizer.bos_token_id is not None and len(ids) > 3 * window
    bos_id = tokenizer.bos_token_id if bos else None
    got = perplexity(model, ids, window, bos_id, batch_size=2)
    # Independently: one window at a time through the LM's own forward, log-softmax and gather.
    nlls = []
    step = window - 1 if bos else window
    for start in range(0, len(ids), step):
        chunk = ([bos_id] if bos else []) + ids[start : start + step]
        with torch.no_grad():
            logits = model.language_model(input_ids=torch.tensor([chunk]))[0]  # (T, V)
        logp = F.log_softmax(logits.double(), dim=-1)
        nlls += [-float(logp[t, chunk[t + 1]]) for t in range(len(chunk) - 1)]
    assert got.tokens == len(nlls) == (len(ids) if bos else len(ids) - math.ceil(len(ids) / window))
    assert got.nll_sum == pytest.approx(sum(nlls), rel=1e-5)
    assert got.ppl == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_identical_lm_gives_zero_difference(ckpts: dict[str, Path]) -> None:
    report = compare(ckpts["base"], ckpts["vlm"], ckpts["text"], ckpts["qa"], memory=False, window=24, max_new_tokens=4)
    ppl = report["perplexity"]
    assert ppl["relative_difference"] == 0.0 and ppl["within_tolerance"]
    assert ppl["base"]["nll_sum"] == ppl["model"]["nll_sum"] and ppl["base"]["tokens"] > 24
    assert report["qa"]["accuracy"] == {"base": 0.5, "model": 0.5}
    assert report["qa"]["relative_difference"] == 0.0 and report["retained"]
    assert [row["base"] for row in report["qa"]["answers"]] == [row["model"] for row in report["qa"]["answers"]]


def test_raw_prompt_answers_are_their_first_line(ckpts: dict[str, Path]) -> None:
    model, processor = vlbridge.load(ckpts["vlm"], vision=False)
    items = load_qa(ckpts["qa"])
    got = answer_questions(model, processor, items, prompt="raw", batch_size=4, max_new_tokens=12)
    inputs = processor(text=[f"Question: {item.question}\nAnswer:" for item in items])
    ids = model.generate(**inputs, max_new_tokens=12, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    whole = [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
    assert got == [text.split("\n")[0].strip() for text in whole]
    assert first_line("  Paris\nQuestion: what is the capital of Italy?") == "Paris"


def test_chat_answers_are_their_first_sentence() -> None:
    assert first_sentence(" The capital is Paris. It is in France.") == "The capital is Paris."
    assert first_sentence("It is 100.0 degrees! Or so.") == "It is 100.0 degrees!"
    assert first_sentence("Neptune\nbut really Jupiter") == "Neptune"


def test_perturbed_lm_fails_the_verdict(ckpts: dict[str, Path]) -> None:
    report = compare(ckpts["base"], ckpts["perturbed"], ckpts["text"], memory=False, window=24, tolerance=0.03)
    ppl = report["perplexity"]
    want = (ppl["model"]["ppl"] - ppl["base"]["ppl"]) / ppl["base"]["ppl"]
    assert ppl["relative_difference"] == pytest.approx(want) and abs(want) > 0.03
    assert not ppl["within_tolerance"] and not report["retained"]
    assert "qa" not in report and "memory" not in report


def test_quantize_measures_the_int8_change_of_the_same_checkpoint(ckpts: dict[str, Path]) -> None:
    report = compare(ckpts["base"], ckpts["base"], ckpts["text"], memory=False, window=24, quantize="int8")
    ppl = report["perplexity"]
    model, processor = vlbridge.load(ckpts["base"], vision=False, quantize="int8")
    tokenizer = processor.tokenizer
    ids = tokenizer.encode(ckpts["text"].read_text(), add_special_tokens=False)
    # the model side is the int8 model; the base side (the same checkpoint) differs from it, so it stayed float
    assert ppl["model"]["nll_sum"] == pytest.approx(
        perplexity(model, ids, 24, tokenizer.bos_token_id).nll_sum, rel=1e-6
    )
    assert ppl["base"]["nll_sum"] != ppl["model"]["nll_sum"] and abs(ppl["relative_difference"]) < 0.03
    assert report["quantize"] == "int8"


def test_other_tokenizer_is_refused(ckpts: dict[str, Path], tmp_path: Path) -> None:
    other = train_tokenizer(["zebra quagga okapi"] * 4, vocab_size=280, template="chatml")
    model, _ = vlbridge.load(ckpts["base"])
    model.processor = processor_for(model, other)
    model.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="tokenize the held-out text differently"):
        compare(ckpts["base"], tmp_path / "other", ckpts["text"], memory=False, window=24)


def test_window_beyond_the_context_is_refused(ckpts: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"exceeds .* context of 128; lower --window"):
        compare(ckpts["base"], ckpts["vlm"], ckpts["text"], memory=False, window=200)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": -1}, "--batch-size must be >= 1, got -1"),  # range(0, n, -1) left every full window out
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
        ({"window": 0}, "--window must be at least 2 tokens, got 0"),  # 0 silently meant the context length
    ],
)
def test_batch_size_and_window_below_their_minimum_are_refused(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compare(tmp_path / "base", tmp_path / "vlm", tmp_path / "text.txt", memory=False, **settings)


def test_relative_difference_and_verdict() -> None:
    assert relative_difference(103.0, 100.0) == pytest.approx(0.03)
    assert relative_difference(0.0, 0.0) == 0.0 and relative_difference(0.5, 0.0) is None
    assert within(0.03, 0.03) and within(-0.029, 0.03) and not within(0.031, 0.03) and not within(None, 0.03)


def test_qa_file_errors_name_the_line(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "a?", "answer": ["x", "y"]}\n\n{"question": "b?"}\n')
    with pytest.raises(DataError, match=r"qa\.jsonl:3: .*answer"):
        load_qa(qa)
    qa.write_text('{"question": "a?", "answer": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"qa\.jsonl:2: not valid JSON"):
        load_qa(qa)
    qa.write_text('{"question": "a?", "answer": ["x", "y"]}\n')
    assert load_qa(qa)[0].answers == ("x", "y")


@pytest.mark.slow  # two fresh interpreters importing torch: ~2 s on an idle 2-core machine, more when it is busy
def test_text_only_deployment_takes_less_memory(ckpts: dict[str, Path]) -> None:
    memory = deployment_memory(ckpts["vlm"])
    full, text = memory["full"], memory["text_only"]
    assert full.load_rss_mb > 0 and text.load_rss_mb > 0
    assert text.load_rss_mb < full.load_rss_mb and text.param_mb < full.param_mb
    vision_mb = sum(p.numel() for p in ViT(VISION).parameters()) * 4 / 2**20  # fp32
    assert full.param_mb - text.param_mb > vision_mb  # the vision tower and the connector
