"""The stage loop: data order, gradient accumulation, metrics and plots, progress, bf16, epochs."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from vlbridge.config import from_dict
from vlbridge.data.collate import collate
from vlbridge.data.datasets import TextDataset
from vlbridge.errors import ConfigError, DataError, TrainingError
from vlbridge.train import trainer as trainer_module
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.recipe import StageRecipe
from vlbridge.train.trainer import StageTrainer, batch_order


class _Halves(SingleProcess):
    """A pretend world of 2 ranks, seen from rank `rank`, to check sharding."""

    world_size = 2

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def shard(self, indices):
        return list(indices)[self.rank :: 2]


def test_batch_order_is_seeded_per_epoch_and_sharded() -> None:
    world = SingleProcess()
    one = batch_order(10, 3, seed=5, epoch=0, world=world)
    assert one == batch_order(10, 3, seed=5, epoch=0, world=world)
    assert len(one) == 3 and all(len(b) == 3 for b in one)  # full batches only
    assert one != batch_order(10, 3, seed=5, epoch=1, world=world)
    assert len(batch_order(2, 4, seed=0, epoch=0, world=world)[0]) == 2  # data smaller than a batch: one short batch
    shards = [[i for b in batch_order(8, 2, seed=1, epoch=0, world=_Halves(r)) for i in b] for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(8)) and not set(shards[0]) & set(shards[1])


def test_length_grouped_batches_cover_the_data_once_with_less_padding() -> None:
    lengths = torch.randint(5, 200, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    world = SingleProcess()
    grouped = batch_order(1000, 8, seed=2, epoch=0, world=world, lengths=lengths)
    plain = batch_order(1000, 8, seed=2, epoch=0, world=world)
    assert grouped == batch_order(1000, 8, seed=2, epoch=0, world=world, lengths=lengths)
    assert len(grouped) == len(plain) == 125 and all(len(b) == 8 for b in grouped)
    assert sorted(i for b in grouped for i in b) == list(range(1000))

    def efficiency(batches: list[list[int]]) -> float:
        return sum(lengths[i] for b in batches for i in b) / sum(8 * max(lengths[i] for i in b) for b in batches)

    assert efficiency(plain) < 0.65 and efficiency(grouped) > 0.9
    first = [lengths[b[0]] for b in grouped[:20]]
    assert first != sorted(first, reverse=True)  # the batches themselves are shuffled, not served longest first


def test_group_by_length_trains_on_text_grouped_by_its_token_lengths(tiny_model, tiny_tokenizer, tmp_path) -> None:
    texts = ["a red circle" * k for k in range(1, 13)]
    data = TextDataset(texts, tiny_tokenizer, max_length=64, pack=False)
    stage = _stage(group_by_length=True, batch_size=2)
    trainer = StageTrainer(stage, tiny_model, data, lambda b: collate(b, 0), tmp_path, seed=0)
    assert trainer.lengths == [len(data[i]["input_ids"]) for i in range(12)]
    assert trainer.run().steps == 4


def test_group_by_length_needs_samples_with_lengths(tiny_model, tmp_path) -> None:
    images = [{"pixel_values": torch.zeros(3, 48, 48)}] * 4
    with pytest.raises(ConfigError, match="group_by_length needs token data"):
        StageTrainer(_stage(group_by_length=True), tiny_model, images, list, tmp_path, seed=0)


def _token_data(n: int = 8, length: int = 12) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(10, 60, (length,), generator=gen)), "labels": ids} for _ in range(n)]


def _stage(**kw) -> StageRecipe:
    base = {"name": "text", "objective": "text_lm", "parts": {"language_model": "full"}, "lr": {"language_model": 1e-2}}
    return from_dict(StageRecipe, {**base, "steps": 4, "save_every": 0, "log_every": 1, **kw})


def _train(model, tmp_path: Path, data=None, **kw) -> StageTrainer:
    trainer = StageTrainer(_stage(**kw), model, data or _token_data(), lambda b: collate(b, 0), tmp_path, seed=0)
    trainer.run()
    return trainer


def test_gradient_accumulation_equals_the_larger_batch(tiny_model, tmp_path) -> None:
    twin = type(tiny_model)(tiny_model.config)
    twin.load_state_dict(tiny_model.state_dict())
    _train(tiny_model, tmp_path / "a", batch_size=4, grad_accum=1)
    _train(twin, tmp_path / "b", batch_size=2, grad_accum=2)  # the same samples per update, in two halves
    a, b = tiny_model.state_dict(), twin.state_dict()
    # Float32 summation order differs between the two, and Adam's normalised step amplifies it for near-zero
    # gradients (up to 1.5e-5 measured); a wrong accumulation moves weights by the order of lr = 1e-2.
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    rows = [[json.loads(r) for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"]
    for one, two in zip(*rows, strict=True):  # the same loss and gradient (scale included) at every step
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
        assert one["grad_norm"] == pytest.approx(two["grad_norm"], rel=1e-4)


def test_metrics_plot_and_progress(tiny_model, tmp_path, capsys) -> None:
    _train(tiny_model, tmp_path, batch_size=2, steps=6, warmup_ratio=0.5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s", "epoch"} <= rows[0].keys()
    assert [r["lr"]["language_model"] for r in rows[:3]] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])  # warmup
    assert rows[-1]["tokens"] == 6 * 2 * 12 and rows[-1]["epoch"] == 1  # 4 batches an epoch: 6 steps reach the 2nd
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    assert "loss=" in err and "tok_s=" in err and "6/6" in err


def test_epochs_bf16_and_checkpointing_options(tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: True)  # autocast whatever this CPU has
    trainer = _train(tiny_model, tmp_path, batch_size=3, grad_accum=2, steps=None, epochs=2, bf16=True,
                     grad_checkpointing=True)  # fmt: skip
    assert trainer.total_steps == 2 * 1  # 8 samples: 2 full batches of 3 an epoch, 2 micro-batches per step
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())  # autocast: weights stay float32
    assert all("forward" not in vars(layer) for layer in tiny_model.language_model.model.layers)  # undone
    assert not tiny_model.vision_encoder.gradient_checkpointing


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocasts_only_where_the_hardware_runs_it(tiny_model, tmp_path, monkeypatch, caplog, native) -> None:
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: native)
    dtypes = []
    tiny_model.language_model.model.layers[0].mlp.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    trainer = _train(tiny_model, tmp_path, batch_size=2, steps=2, bf16=True)
    assert trainer.bf16 is native
    assert set(dtypes) == {torch.bfloat16 if native else torch.float32}
    assert ("has no native bf16" in caplog.text) is not native  # the fallback says so and why


def test_empty_data_is_a_data_error_naming_the_stage_file(tiny_model, tmp_path) -> None:
    with pytest.raises(DataError) as err:
        StageTrainer(_stage(data="corpus.txt"), tiny_model, [], lambda b: b, tmp_path, seed=0)
    assert str(err.value).startswith("corpus.txt: stage 'text' has no training samples; ")
    with pytest.raises(ConfigError, match="stage 'text' has 1 samples, fewer than the 2 processes"):
        StageTrainer(_stage(), tiny_model, _token_data(1), lambda b: b, tmp_path, seed=0, world=_Halves(0))


def test_a_loss_that_is_not_finite_stops_the_stage_naming_it_and_the_step(tiny_model, tmp_path) -> None:
    calls = []

    def nan_at_third_forward(module, inputs, output):
        calls.append(1)
        return output * math.nan if len(calls) == 3 else output

    tiny_model.language_model.model.norm.register_forward_hook(nan_at_third_forward)
    with pytest.raises(TrainingError) as err:
        _train(tiny_model, tmp_path, batch_size=2, steps=4)
    assert str(err.value).startswith("stage 'text', step 3: the loss is nan; ")
    assert "lower the stage's learning rates" in str(err.value)
    assert all(torch.isfinite(p).all() for p in tiny_model.parameters())  # the NaN step was not applied
    assert not (tmp_path / "loss.png").exists()  # nor the stage finished


def test_an_infinite_gradient_stops_the_stage_before_the_weights_change(tiny_model, tmp_path) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.language_model.lm_head.weight.register_hook(lambda grad: grad * math.inf)
    with pytest.raises(TrainingError, match=r"^stage 'text', step 1: the gradient norm is (inf|nan); "):
        _train(tiny_model, tmp_path, batch_size=2, steps=1)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


class _OneBadRecord(torch.utils.data.Dataset):
    """Token samples of which one is a malformed record: reading it raises the one-line DataError."""

    def __init__(self, bad: int) -> None:
        self.samples, self.bad = _token_data(), bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if index == self.bad:
            raise DataError(f"record 'r{index}': its image is not a PNG; replace the file", "data/instruct.json", 7)
        return self.samples[index]


def _refuse_short(batch: list[dict], pad_token_id: int) -> dict:
    if len(batch) < 8:
        raise ConfigError("a batch of fewer than 8 samples; set batch_size to 8")
    return collate(batch, pad_token_id)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_an_error_raised_in_a_dataloader_worker_reaches_the_loop_as_it_was_raised(
    tiny_model, tmp_path, num_workers
) -> None:
    stage = _stage(batch_size=4, steps=2)
    data, collate_fn = _OneBadRecord(bad=5), partial(collate, pad_token_id=0)
    trainer = StageTrainer(stage, tiny_model, data, collate_fn, tmp_path, seed=0, num_workers=num_workers)
    with pytest.raises(DataError) as err:
        trainer.run()
    assert str(err.value) == "data/instruct.json:7: record 'r5': its image is not a PNG; replace the file"
    assert (err.value.path, err.value.line) == (Path("data/instruct.json"), 7)
    collate_fn = partial(_refuse_short, pad_token_id=0)  # an error in collation too
    trainer = StageTrainer(stage, tiny_model, _token_data(), collate_fn, tmp_path, seed=0, num_workers=num_workers)
    with pytest.raises(ConfigError) as err:
        trainer.run()
    assert str(err.value) == "a batch of fewer than 8 samples; set batch_size to 8"
