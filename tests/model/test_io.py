"""Checkpoint round trips and strict, actionable loading errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlbridge
from vlbridge.errors import CheckpointError


def _inputs(proc):
    from PIL import Image

    image = Image.new("RGB", (40, 36), (200, 30, 30))
    return proc(text="USER: <image>\nwhat colour? ASSISTANT:", images=[image], return_tensors="pt")


def test_round_trip_gives_identical_logits(clip_llava_dir: Path, tmp_path: Path) -> None:
    model, proc = vlbridge.load(clip_llava_dir)
    model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["format"] == "vlbridge" and meta["model"]["connector"]["name"] == "mlp"
    again, proc2 = vlbridge.load(tmp_path / "ckpt")
    inputs = _inputs(proc)
    assert torch.equal(inputs["input_ids"], _inputs(proc2)["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    assert not list((tmp_path / "ckpt").glob(".*.tmp")), "temporary files left behind"


def test_tied_round_trip(siglip_llava_dir: Path, tmp_path: Path) -> None:
    model, proc = vlbridge.load(siglip_llava_dir)
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path / "tied")
    assert "language_model.lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    again, _ = vlbridge.load(tmp_path / "tied")
    inputs = _inputs(proc)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_load(clip_llava_dir: Path, name: str, dtype: torch.dtype) -> None:
    model, proc = vlbridge.load(clip_llava_dir, dtype=name)
    assert all(p.dtype == dtype for p in model.parameters())
    ref, _ = vlbridge.load(clip_llava_dir)
    inputs = _inputs(proc)
    with torch.no_grad():
        got, want = model(**inputs).logits.float(), ref(**inputs).logits
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_sharded_hf_checkpoint_loads(clip_llava_dir: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(clip_llava_dir)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="50KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        shutil.copy(clip_llava_dir / name, sharded / name)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    model, proc = vlbridge.load(sharded)
    ref, _ = vlbridge.load(clip_llava_dir)
    inputs = _inputs(proc)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)


def test_missing_path_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        vlbridge.load(tmp_path / "nope")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        vlbridge.load(tmp_path / "file.bin")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        vlbridge.load(tmp_path)


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_missing_and_unexpected_keys_are_listed(clip_llava_dir: Path, tmp_path: Path) -> None:
    missing = _edit_weights(
        clip_llava_dir, tmp_path / "missing", lambda t: t.pop("multi_modal_projector.linear_2.weight")
    )
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): connector\.linear_2\.weight"):
        vlbridge.load(missing)

    def add_extra(t: dict) -> None:
        t["language_model.model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)

    extra = _edit_weights(clip_llava_dir, tmp_path / "extra", add_extra)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): language_model\.model\.layers\.9"):
        vlbridge.load(extra)

    def add_alien(t: dict) -> None:
        t["some_other_head.weight"] = torch.zeros(2)

    alien = _edit_weights(clip_llava_dir, tmp_path / "alien", add_alien)
    with pytest.raises(CheckpointError, match=r"unknown layout: some_other_head\.weight"):
        vlbridge.load(alien)


def test_stale_rotary_buffers_are_skipped(clip_llava_dir: Path, tmp_path: Path) -> None:
    def add_inv_freq(t: dict) -> None:
        t["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    old = _edit_weights(clip_llava_dir, tmp_path / "old", add_inv_freq)
    model, proc = vlbridge.load(old)
    ref, _ = vlbridge.load(clip_llava_dir)
    inputs = _inputs(proc)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)


def test_wrong_shape_is_reported(clip_llava_dir: Path, tmp_path: Path) -> None:
    def shrink(t: dict) -> None:
        t["multi_modal_projector.linear_1.bias"] = torch.zeros(3)

    bad = _edit_weights(clip_llava_dir, tmp_path / "shape", shrink)
    with pytest.raises(CheckpointError, match=r"wrong shape: connector\.linear_1\.bias \(3,\)"):
        vlbridge.load(bad)


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        vlbridge.load(tmp_path)


def test_text_llm_checkpoint_loads_text_only(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from hf_fixtures import make_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=210,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    model, proc = vlbridge.load(tmp_path)
    assert not model.has_vision
    ids = proc(text="a red circle", return_tensors="pt")
    with torch.no_grad():
        assert (model(**ids).logits - hf(**ids).logits).abs().max() <= 1e-4


def test_a_model_built_from_its_config_saves_and_loads_like_a_loaded_one(clip_llava_dir: Path, tmp_path: Path) -> None:
    from vlbridge.lm.tokenizer import Tokenizer
    from vlbridge.model.io import read_config
    from vlbridge.model.vlm import VisionLanguageModel

    config, _ = read_config(clip_llava_dir)
    torch.manual_seed(0)
    built = VisionLanguageModel(config, tokenizer=Tokenizer.from_dir(clip_llava_dir)).eval()
    built.save_pretrained(tmp_path / "built")
    loaded, proc = vlbridge.load(tmp_path / "built")
    inputs = _inputs(built.processor)
    assert torch.equal(inputs["input_ids"], _inputs(proc)["input_ids"])
    assert built.generation_config() == loaded.generation_config()
    with torch.no_grad():
        assert torch.equal(built(**inputs).logits, loaded(**inputs).logits)
        assert torch.equal(built.generate(**inputs, max_new_tokens=5), loaded.generate(**inputs, max_new_tokens=5))


def test_a_model_saved_without_a_tokenizer_names_what_is_missing(clip_llava_dir: Path, tmp_path: Path) -> None:
    from vlbridge.model.io import read_config
    from vlbridge.model.vlm import VisionLanguageModel

    config, _ = read_config(clip_llava_dir)
    VisionLanguageModel(config).save_pretrained(tmp_path / "bare")
    assert (tmp_path / "bare" / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is missing"):
        vlbridge.load(tmp_path / "bare")


def _cut_weights(d: Path) -> Path:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return d / "model.safetensors"


def _write(name: str, content: bytes):
    def edit(d: Path) -> Path:
        (d / name).write_bytes(content)
        return d / name

    return edit


def _edit_config(change):
    def edit(d: Path) -> Path:
        config = json.loads((d / "config.json").read_text())
        change(config)
        (d / "config.json").write_text(json.dumps(config))
        return d / "config.json"

    return edit


def _truncated_config(d: Path) -> Path:
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text[: len(text) // 2])
    return d / "config.json"


def _huge_config(d: Path) -> Path:
    with (d / "config.json").open("r+b") as handle:
        handle.truncate(1 << 30)  # sparse: takes no disk, and must take no memory either
    return d / "config.json"


def _index(weight_map) -> object:
    """A shard index beside the single weights file, naming shards as `weight_map` says."""

    def edit(d: Path) -> Path:
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return d / "model.safetensors.index.json"

    return edit


def _index_to_outside(d: Path) -> Path:
    shutil.copy(d / "model.safetensors", d.parent / "outside.safetensors")  # a whole, valid file out of the folder
    names = load_file(d / "model.safetensors")
    return _index(dict.fromkeys(names, "../outside.safetensors"))(d)


DAMAGED = {
    "weights cut in half": (_cut_weights, r"truncated or corrupt"),
    "weights empty": (_write("model.safetensors", b""), r"truncated or corrupt"),
    "weights garbage": (_write("model.safetensors", b"\x93garbage" * 64), r"truncated or corrupt"),
    "config garbage": (_write("config.json", b"\x00\xff not json"), r"copy it again"),
    "config truncated": (_truncated_config, r"copy it again"),
    "config a JSON list": (_write("config.json", b"[1, 2, 3]"), r"must hold a JSON object"),
    "config of 1 GiB": (_huge_config, r"1024 MiB, not the small JSON file"),
    "tokenizer garbage": (_write("tokenizer.json", b"{ garbage"), r"re-save the tokenizer"),
    "processor config garbage": (_write("processor_config.json", b"garbage"), r"copy it again"),
    "shard index garbage": (_write("model.safetensors.index.json", b"garbage"), r"copy it again"),
    "shard index without a weight map": (_write("model.safetensors.index.json", b"{}"), r"weight_map"),
    "shard index names a missing shard": (
        _index({"a.weight": "model-00001-of-00002.safetensors"}),
        r"model-00001-of-00002\.safetensors.*copy the missing shard",
    ),
    "shard index names a file outside the folder": (_index_to_outside, r"outside\.safetensors.*inside"),
    "llava config without vision_config": (_edit_config(lambda c: c.pop("vision_config")), r"no vision_config"),
    "llava config without text_config": (_edit_config(lambda c: c.pop("text_config")), r"no text_config"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_checkpoint_file_is_a_checkpoint_error_naming_it(
    clip_llava_dir: Path, tmp_path: Path, case: str
) -> None:
    damage, fix = DAMAGED[case]
    broken = tmp_path / "ckpt"
    shutil.copytree(clip_llava_dir, broken)
    named = damage(broken)
    with pytest.raises(CheckpointError, match=fix) as caught:
        vlbridge.load(broken)
    assert str(named) in str(caught.value)


def test_a_vlbridge_config_without_its_model_section_is_a_checkpoint_error(
    clip_llava_dir: Path, tmp_path: Path
) -> None:
    model, _ = vlbridge.load(clip_llava_dir)
    model.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    del config["model"]
    (tmp_path / "ours" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json has no 'model' section"):
        vlbridge.load(tmp_path / "ours")
