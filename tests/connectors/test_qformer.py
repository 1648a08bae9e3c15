"""The qformer connector (BLIP-2 stage 2): token count, options, cross-attention placement, gradients through a
VLM's causal-LM loss, and a save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import vlbridge
from tiny_vlm import WIDE_VISION, tiny_config, tiny_vlm
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, available, build_connector
from vlbridge.connectors.qformer import QFormerConnector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer
from vlbridge.lm.tokenizer_train import train_tokenizer
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel

CONTEXT = ConnectorContext(
    vision_hidden_size=24, lm_config=LMConfig(hidden_size=20, max_position_embeddings=64), block_cls=DecoderLayer
)


def _qformer(**options) -> QFormerConnector:
    torch.manual_seed(0)
    connector = build_connector(ConnectorConfig(name="qformer", options=options), CONTEXT)
    assert isinstance(connector, QFormerConnector)
    return connector


def _tiny_vlm(vocab_size: int = 300, image_token_id: int = 4) -> VisionLanguageModel:
    """A tiny VLM with a 3-query qformer (seed 0, train mode): a ViT of width 32 with 16 px patches on 32 px images."""
    lm = {"vocab_size": vocab_size, "max_position_embeddings": 64}
    vision = {**WIDE_VISION, "patch_size": 16}
    config = tiny_config(
        "qformer",
        {"num_queries": 3},
        image_size=32,
        processor=True,
        image_token_id=image_token_id,
        lm=lm,
        vision=vision,
    )
    return tiny_vlm(config).train()


def test_qformer_is_registered_with_blip2_defaults() -> None:
    assert "qformer" in available()
    s = _qformer().settings
    assert (s.num_queries, s.hidden_size, s.num_layers, s.cross_attention_freq) == (32, 24, 2, 2)
    assert s.hidden_size % s.num_heads == 0 and s.intermediate_size == 4 * s.hidden_size
    wide = build_connector(
        ConnectorConfig(name="qformer"), ConnectorContext(1024, LMConfig(hidden_size=8), DecoderLayer)
    )
    assert (wide.settings.hidden_size, wide.settings.num_heads) == (768, 12)  # BERT-base, as BLIP-2


@pytest.mark.parametrize("n_patches", [1, 9, 50])
def test_num_tokens_is_the_output_size_whatever_the_patches(n_patches: int) -> None:
    connector = _qformer(num_queries=5, hidden_size=16)
    out = connector(torch.randn(2, n_patches, 24))
    assert out.shape == (2, connector.num_tokens(n_patches), 20) == (2, 5, 20)


def test_cross_attention_every_other_layer_and_it_reads_the_image() -> None:
    connector = _qformer(num_layers=4, cross_attention_freq=2, num_queries=4, hidden_size=16).eval()
    assert [layer.crossattention is not None for layer in connector.layer] == [True, False, True, False]
    keys = connector.state_dict()
    assert "layer.0.crossattention.attention.key.weight" in keys and keys["query_tokens"].shape == (1, 4, 16)
    assert keys["layer.0.crossattention.attention.key.weight"].shape == (16, 24)  # keys from the vision width
    a, b = torch.randn(1, 9, 24), torch.randn(1, 9, 24)
    assert not torch.allclose(connector(a), connector(b))
    batched = connector(torch.cat([a, b]))
    assert torch.allclose(batched[0], connector(a)[0], atol=1e-6)  # images do not see each other


def test_outputs_are_layer_normed_queries_projected() -> None:
    connector = _qformer(num_queries=4, hidden_size=16).eval()
    features = torch.randn(2, 9, 24)
    queries, text = connector.encode(features)
    assert text is None and queries.shape == (2, 4, 16)
    norm = connector.layer[-1].output_query.LayerNorm
    standardized = (queries - norm.bias) / norm.weight
    assert torch.allclose(standardized.mean(-1), torch.zeros(2, 4), atol=1e-4)
    assert torch.allclose(connector(features), connector.language_projection(queries))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_querys": 4}, r"connector 'qformer' has no option\(s\) num_querys; its options are: .*num_queries"),
        ({"hidden_size": 30, "num_heads": 4}, r"hidden_size 30 is not divisible by num_heads 4"),
        ({"num_layers": 0}, r"connector 'qformer': connector\.options\.num_layers must be >= 1, got 0"),
        ({"num_queries": True}, r"connector\.options\.num_queries: expected int, got a boolean True"),
        ({"dropout": 1.5}, r"connector\.options\.dropout must be within \[0, 1\), got 1\.5"),
        ({"layer_norm_eps": 0}, r"connector\.options\.layer_norm_eps must be positive, got 0\.0"),
    ],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _qformer(**options)


def test_stage_two_gradients_reach_every_connector_parameter() -> None:
    model = _tiny_vlm()
    k = model.tokens_per_image(32, 32)
    assert k == 3
    ids = torch.randint(10, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 2 : 2 + k] = model.config.image_token_id
    labels = ids.masked_fill(ids == model.config.image_token_id, -100)
    out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32), labels=labels)
    assert out.logits.shape == (2, 12, 300)
    out.loss.backward()
    assert model.connector is not None
    dead = [n for n, p in model.connector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_save_load_round_trip_gives_equal_logits(tmp_path: Path) -> None:
    texts = ["a red circle left of a blue square", "three green triangles", "a small yellow star"] * 4
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = _tiny_vlm(tokenizer.vocab_size, tokenizer.token_to_id("<image>")).eval()
    model.processor = processor_for(model, tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    again, processor = vlbridge.load(str(tmp_path / "ckpt"))
    assert isinstance(again.connector, QFormerConnector) and again.connector.settings == model.connector.settings
    assert again.config == model.config
    prompt = "<image> a red circle"
    image = Image.new("RGB", (40, 32), (200, 30, 30))
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 3
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
