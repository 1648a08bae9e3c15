"""`vlbridge data filter`: the normalised score is the documented formula; a briefly trained contrastive model drops
planted wrong captions and keeps the right ones (Python API and the CLI); records that are not pairs stay unscored;
a contrastive stage of a training run leaves a folder the filter scores with; CLIP/SigLIP folders and writing over
the input are refused with typed errors."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "train"))

import tiny_run

from vlbridge.cli.main import main
from vlbridge.config import ModelConfig, from_dict
from vlbridge.data.datasets import ImageTextDataset, caption, collate_image_text
from vlbridge.data.hygiene.filter import ContrastiveScorer, filter_pairs, load_scorer
from vlbridge.data.hygiene.output import write_records
from vlbridge.data.llava_json import Record, load_llava
from vlbridge.errors import ConfigError, DataError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.contrastive import HEAD_FILE, ContrastiveHead
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives import TrainStep, build_objective
from vlbridge.train.pipeline import fit_config, train
from vlbridge.train.recipe import recipe_from_dict

SWAPPED = (0, 1, 2, 3)  # captions rotated among these records: each gets another record's caption


def _swap(records: list[Record]) -> list[Record]:
    texts = [caption(records[i]) for i in SWAPPED]
    out = list(records)
    for k, i in enumerate(SWAPPED):
        turns = tuple(
            {**t, "value": texts[(k + 1) % len(texts)]} if t["from"] == "gpt" else t for t in records[i].conversations
        )
        out[i] = replace(records[i], conversations=turns)
    return out


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, a scorer folder: model/ + contrastive head) trained contrastively on the data's clean pairs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second thread on a busy machine
    data = tiny_run.make_data(tmp_path_factory.mktemp("data"), n=24)
    tokenizer = Tokenizer.from_dir(tiny_run.make_tokenizer(data, tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    model = VisionLanguageModel(fit_config(from_dict(ModelConfig, tiny_run.TINY_MODEL), tokenizer, "chatml"))
    processor = processor_for(model, tokenizer)
    records = load_llava(data / "captions.json").items
    pairs = ImageTextDataset(records, data, processor, max_length=256)  # as the scorer reads them
    batch = collate_image_text([pairs[i] for i in range(len(pairs))], pad_token_id=tokenizer.pad_token_id)
    objective = build_objective("contrastive", model)
    step = TrainStep(model, objective)
    opt = torch.optim.AdamW([*model.vision_encoder.parameters(), *objective.parameters()], lr=3e-3)  # LM frozen
    for _ in range(80):
        step(batch).loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("scorer")
    model.processor = processor
    model.save_pretrained(folder / "model")
    objective.save(folder)
    return data, folder


@pytest.mark.slow  # the scorer fixture trains a tiny contrastive model (80 steps)
def test_planted_wrong_captions_are_dropped_and_right_ones_kept(scorer_dir) -> None:
    data, folder = scorer_dir
    records = _swap(load_llava(data / "captions.json").items)
    scorer = load_scorer(folder)
    scores = scorer(records, data)
    assert all(0.0 <= s <= 1.0 for s in scores)
    kept, dropped = filter_pairs(records, data, scorer)
    assert {d.id for d in dropped} == {records[i].id for i in SWAPPED}
    assert [r.id for r in kept] == [r.id for i, r in enumerate(records) if i not in SWAPPED]
    assert all(d.score < 0.7 and "< threshold 0.7" in d.reason for d in dropped)


@pytest.mark.slow  # the scorer fixture trains a tiny contrastive model (80 steps)
def test_score_is_the_documented_formula(scorer_dir) -> None:
    """score = exp(s a) / (exp(s a) + mean_j exp(s b_j)) over the other distinct captions (all of them here)."""
    data, folder = scorer_dir
    records = _swap(load_llava(data / "captions.json").items)
    scorer = load_scorer(folder, contrast=1024)
    got = scorer(records, data)
    texts = sorted({caption(r) for r in records})
    with torch.no_grad():
        t = scorer._texts(texts)
        im = scorer._images(records, data)
        s = float(scorer.head.scale())
    for i in (0, 5):
        own = texts.index(caption(records[i]))
        a = s * float(im[i] @ t[own])
        others = [s * float(im[i] @ t[j]) for j in range(len(texts)) if j != own]
        mean = sum(torch.tensor(others).exp().tolist()) / len(others)
        assert got[i] == pytest.approx(float(torch.tensor(a).exp()) / (float(torch.tensor(a).exp()) + mean), rel=1e-4)


def test_records_that_are_not_pairs_are_kept_unscored(tmp_path) -> None:
    calls = []

    def stub(records, root):
        calls.append([r.id for r in records])
        return [0.1] * len(records)

    text_only = Record("t", (), ({"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}))
    pair = Record("p", ("a.png",), ({"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}))
    kept, dropped = filter_pairs([text_only, pair], tmp_path, stub, threshold=0.5)
    assert calls == [["p"]] and [r.id for r in kept] == ["t"] and [d.id for d in dropped] == ["p"]
    kept, dropped = filter_pairs([text_only, pair], tmp_path, stub, threshold=0.05)
    assert [r.id for r in kept] == ["t", "p"] and not dropped
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        filter_pairs([pair], tmp_path, stub, threshold=1.5)


@pytest.mark.slow  # the scorer fixture trains a tiny contrastive model (80 steps)
def test_cli_filter_writes_kept_records_and_a_report(scorer_dir, tmp_path, capsys) -> None:
    data, folder = scorer_dir
    records = _swap(load_llava(data / "captions.json").items)
    noisy = data / "noisy.json"
    write_records(noisy, records)
    out = tmp_path / "kept.json"
    assert main(["data", "filter", str(noisy), "--scorer", str(folder), "--out", str(out)]) == 0
    kept = load_llava(out, data).items  # reads against the same image folder
    assert [r.id for r in kept] == [r.id for i, r in enumerate(records) if i not in SWAPPED]
    assert kept[0].conversations == records[len(SWAPPED)].conversations
    rows = [json.loads(line) for line in (tmp_path / "kept.dropped.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(records[i].id for i in SWAPPED)
    assert all(set(r) == {"id", "score", "reason"} and r["score"] < 0.7 for r in rows)
    before = noisy.read_bytes()
    assert main(["data", "filter", str(noisy), "--scorer", str(folder), "--out", str(noisy)]) == 2
    assert "is the input file" in capsys.readouterr().err and noisy.read_bytes() == before


def test_clip_checkpoints_and_folders_without_a_head_are_refused(tmp_path) -> None:
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ConfigError, match="text encoder"):
        load_scorer(tmp_path / "clip")
    with pytest.raises(ConfigError, match="no model/"):
        load_scorer(tmp_path)
    (tmp_path / "model").mkdir()
    with pytest.raises(Exception, match=HEAD_FILE):
        load_scorer(tmp_path)


@pytest.mark.slow  # the scorer fixture trains a tiny contrastive model (80 steps)
def test_one_distinct_caption_has_nothing_to_contrast_with(scorer_dir) -> None:
    data, folder = scorer_dir
    records = load_llava(data / "captions.json").items[:2]
    same = [records[0], replace(records[1], conversations=records[0].conversations)]
    with pytest.raises(DataError, match="two distinct captions"):
        load_scorer(folder)(same, data)
    assert isinstance(load_scorer(folder), ContrastiveScorer)


@pytest.mark.slow  # the scorer fixture trains a tiny contrastive model (80 steps)
def test_a_contrastive_stage_leaves_a_folder_the_filter_scores_with(scorer_dir, tmp_path) -> None:
    data, _ = scorer_dir
    stage = tiny_run.stage(
        "pairs", "contrastive", "captions.json", {"vision_encoder": "full"}, {"vision_encoder": 1e-3}
    )
    run = train(recipe_from_dict(tiny_run.recipe(tmp_path / "run", data, None, [{**stage, "steps": 2}])))
    scorer = load_scorer(run / "pairs")
    assert torch.equal(scorer.head.logit_scale, ContrastiveHead.load(run / "pairs" / HEAD_FILE).logit_scale)
    records = load_llava(data / "captions.json").items[:4]
    assert len(scorer(records, data)) == 4
