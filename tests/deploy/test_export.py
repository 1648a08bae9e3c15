"""Export's refusals: connectors, towers and models transformers' llava cannot hold get a typed error naming them and
where the model can go instead, before any file is written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import safe_open

import vlbridge
from tiny_vlm import WIDE_VISION, tiny_config, tiny_vlm
from vlbridge.deploy.export_hf import LLAVA_LAYOUTS, export
from vlbridge.errors import ConfigError, ModalityError
from vlbridge.model.hf_llava import LLAVA_KEY_RULES, rename_key

UNEXPORTABLE = {
    "mini": {"prefusion_layers": 1},
    "qformer": {},
    "perceiver": {},
    "pool": {},
    "tome": {},
    "patch_merger": {},
    "gated_xattn": {},
}


@pytest.mark.parametrize("connector", sorted(UNEXPORTABLE))
def test_connectors_llava_cannot_hold_are_refused_by_name(connector: str, tmp_path: Path) -> None:
    model = tiny_vlm(tiny_config(connector, UNEXPORTABLE[connector], vision=WIDE_VISION))
    with pytest.raises(ConfigError) as err:
        export(model, tmp_path / "out")
    message = str(err.value)
    assert f"connector {connector!r} cannot be exported to llava-hf" in message
    assert "vlbridge's own format" in message and "--format hf-lm" in message
    assert not (tmp_path / "out").exists()


def test_mlp_deeper_than_two_layers_is_refused(tmp_path: Path) -> None:
    config = tiny_config()
    model = tiny_vlm(replace(config, connector=replace(config.connector, depth=3)))
    with pytest.raises(ConfigError, match="connector mlp with depth 3 cannot be exported to llava-hf"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("format", ["llava-hf", "hf-lm"])
def test_an_int8_model_is_refused_before_writing(format: str, tmp_path: Path) -> None:
    """transformers' layouts hold float weights: an int8 model's weights and scales would load as garbage there."""
    quantized, _ = vlbridge.load(quantize="int8")
    with pytest.raises(ConfigError, match=f"the model is int8-quantised and {format} holds float weights; export the"):
        export(quantized, tmp_path / "out", format=format)
    assert not (tmp_path / "out").exists()


def test_rope2d_vision_tower_is_refused_before_writing(tmp_path: Path) -> None:
    model = tiny_vlm(tiny_config(vision={"position": "rope2d"}))
    with pytest.raises(ConfigError, match=r"vision\.position 'rope2d' has no HF CLIP/SigLIP equivalent"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_models_without_vision_go_to_hf_lm(clip_llava_dir: Path, tmp_path: Path) -> None:
    text_only, _ = vlbridge.load(clip_llava_dir, vision=False)
    with pytest.raises(ModalityError, match="load it with vision=True"):
        export(text_only, tmp_path / "out")
    text_config = replace(text_only.config, vision=None)
    with pytest.raises(ModalityError, match="export it with --format hf-lm"):
        export(tiny_vlm(text_config), tmp_path / "out")


def test_unknown_format_and_legacy_keys_for_hf_lm_are_config_errors(clip_llava_dir: Path, tmp_path: Path) -> None:
    model, _ = vlbridge.load(clip_llava_dir)
    with pytest.raises(ConfigError, match="export format 'gguf' is unknown; choose one of llava-hf, hf-lm"):
        export(model, tmp_path / "out", format="gguf")
    with pytest.raises(ConfigError, match="--format hf-lm has one key layout"):
        export(model, tmp_path / "out", format="hf-lm", legacy_keys=True)


@pytest.mark.parametrize("format", ["llava-hf", "hf-lm"])
def test_model_without_tokenizer_is_refused_before_writing(format: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no tokenizer attached"):
        export(tiny_vlm(tiny_config()), tmp_path / "out", format=format)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("format", ["llava-hf", "hf-lm"])
def test_a_destination_holding_files_is_refused(format: str, tmp_path: Path) -> None:
    model, _ = vlbridge.load()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ConfigError, match="exists and is not an empty directory; choose a new --out"):
        export(model, tmp_path / "out", format=format)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.safetensors.index.json"]


@pytest.mark.parametrize("layout", sorted(LLAVA_LAYOUTS))
def test_every_written_key_reads_back_to_ours_under_the_loaders_rules(layout: str, tmp_path: Path) -> None:
    model, _ = vlbridge.load()
    export(model, tmp_path / "out", legacy_keys=layout == "legacy")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    ours = set(model.state_dict()) - {"language_model.lm_head.weight"}  # tied to the embeddings: not stored
    assert {rename_key(key, LLAVA_KEY_RULES) for key in keys} == ours
