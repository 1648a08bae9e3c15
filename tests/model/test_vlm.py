"""VisionLanguageModel invariants on a tiny random model built from a config (no transformers needed)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, processors

from tiny_vlm import IMAGE_TOKEN, greedy_by_full_forwards, tiny_config
from vlbridge.connectors.base import FusionCache
from vlbridge.connectors.mlp import MLPConnector
from vlbridge.connectors.splice import splice
from vlbridge.errors import ConfigError, ModalityError, PlaceholderError, PromptError
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.vlm import VisionLanguageModel


def _prompt(model: VisionLanguageModel, n_images: int) -> torch.Tensor:
    k = model.tokens_per_image(16, 16)
    ids = [1, 5, 6]
    for _ in range(n_images):
        ids += [IMAGE_TOKEN] * k + [7, 8]
    return torch.tensor([ids])


@pytest.mark.parametrize("connector", ["mlp", "linear"])
def test_tokens_per_image_matches_connector_output(connector: str) -> None:
    model = VisionLanguageModel(tiny_config(connector)).eval()
    features = model.vision_encoder(torch.randn(2, 3, 16, 16))
    assert model.connector(features).shape == (2, model.tokens_per_image(16, 16), 32)
    assert model.tokens_per_image(16, 16) == 4  # (16/8)^2 patches, CLS dropped


def test_loss_ignores_masked_labels() -> None:
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_config()).eval()
    ids = _prompt(model, 1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -2:] = ids[0, -2:]
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16), labels=labels)
    logp = out.logits[0].log_softmax(-1)
    want = -(logp[-3, ids[0, -2]] + logp[-2, ids[0, -1]]) / 2
    assert torch.allclose(out.loss, want, atol=1e-6)


def test_training_loss_equals_the_full_forward_loss_and_gradients() -> None:
    """`loss` computes logits at the supervised positions only; value and gradients are those of the full forward."""
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_config()).eval()
    ids = torch.cat([_prompt(model, 1), _prompt(model, 1)])
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding in the second row
    labels = torch.where(torch.rand(ids.shape) < 0.4, ids, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(2, 3, 16, 16)}
    full = model(**inputs, labels=labels).loss
    full.backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    picked = model.loss(labels=labels, **inputs)
    picked.backward()
    assert torch.allclose(picked, full, atol=1e-6)
    for name, param in model.named_parameters():  # parts the loss never reaches (an unused ViT layer) stay None
        assert (param.grad is None and want[name] is None) or torch.allclose(param.grad, want[name], atol=1e-6), name


def test_placeholder_count_mismatch_is_an_error() -> None:
    model = VisionLanguageModel(tiny_config()).eval()
    ids = _prompt(model, 2)
    with pytest.raises(PlaceholderError, match="8 image-token positions but the images give 4 visual tokens"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16))
    with pytest.raises(ModalityError, match="no pixel_values"):
        model(input_ids=ids)


def test_text_only_model_refuses_images() -> None:
    model = VisionLanguageModel(tiny_config(), vision=False).eval()
    with pytest.raises(ModalityError, match="loaded text-only"):
        model(input_ids=_prompt(VisionLanguageModel(tiny_config()), 1), pixel_values=torch.randn(1, 3, 16, 16))


def test_text_llm_has_no_image_token() -> None:
    config = tiny_config()
    model = VisionLanguageModel(type(config)(language_model=config.language_model, vision=None, image_token_id=5))
    ids = torch.tensor([[1, 5, 6, 5]])  # id 5 is an ordinary token of a text LLM
    assert model(input_ids=ids).logits.shape == (1, 4, 100)
    with pytest.raises(ModalityError, match="text-only model"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16))


def test_image_and_text_only_prompts_in_one_batch() -> None:
    torch.manual_seed(2)
    model = VisionLanguageModel(tiny_config()).eval()
    with_image = _prompt(model, 1)[0]
    text_only = torch.tensor([5, 6, 7])
    pad = len(with_image) - len(text_only)
    ids = torch.stack([with_image, torch.cat([torch.zeros(pad, dtype=torch.long), text_only])])
    mask = torch.stack([torch.ones_like(with_image), torch.cat([torch.zeros(pad), torch.ones(3)]).long()])
    pixels = torch.randn(1, 3, 16, 16)
    both = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=5, eos_token_id=())
    alone_image = model.generate(input_ids=with_image[None], pixel_values=pixels, max_new_tokens=5, eos_token_id=())
    alone_text = model.generate(input_ids=text_only[None], max_new_tokens=5, eos_token_id=())
    assert torch.equal(both[0, -5:], alone_image[0, -5:])
    assert torch.equal(both[1, -5:], alone_text[0, -5:])


def test_cached_generation_equals_full_recomputation_with_images() -> None:
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_config()).eval()
    ids = _prompt(model, 2)
    pixels = torch.randn(2, 3, 16, 16)
    got = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, eos_token_id=())
    assert torch.equal(got, greedy_by_full_forwards(model, ids, None, pixels, 8))


def test_stream_yields_generate_tokens() -> None:
    torch.manual_seed(1)
    model = VisionLanguageModel(tiny_config()).eval()
    ids = _prompt(model, 1)
    pixels = torch.randn(1, 3, 16, 16)
    full = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, eos_token_id=())
    streamed = torch.stack(list(model.stream(input_ids=ids, pixel_values=pixels, max_new_tokens=6, eos_token_id=())))
    assert torch.equal(streamed[:, 0], full[0, ids.shape[1] :])


class _ShiftText(MLPConnector):
    """A test connector that rewrites the text: every text token, prompt or generated, gains the mean visual token."""

    def fuse(self, embeds, image_mask, features, attention_mask=None, cache=None):
        visual = self(features)  # (N, K, D)
        shift = visual.mean(dim=(0, 1))  # (D,)
        if cache is not None:
            cache.state = shift
        out = splice(embeds, image_mask, visual)
        return torch.where(image_mask.unsqueeze(-1), out, out + shift)

    def fuse_step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, cache: FusionCache) -> torch.Tensor:
        self.steps += 1
        return embeds + cache.state


def test_connector_fusion_reaches_prompt_and_generated_tokens() -> None:
    torch.manual_seed(4)
    model = VisionLanguageModel(tiny_config()).eval()
    shifted = _ShiftText(model.config.connector, model.connector.context)
    shifted.load_state_dict(model.connector.state_dict())
    shifted.steps = 0
    model.connector = shifted
    ids = _prompt(model, 2)
    pixels = torch.randn(2, 3, 16, 16)
    got = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, eos_token_id=())
    assert shifted.steps == 5  # every decode step after the prefill
    assert torch.equal(got, greedy_by_full_forwards(model, ids, None, pixels, 6))


class _NewlineDecoder:
    """A processor stand-in whose every token decodes to a line: a reply is one token long if the model stops at
    a newline."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "a\n" * len(ids)


@pytest.mark.parametrize(("template", "new_tokens"), [("qa", 1), ("plain", 1), ("chatml", 6)])
def test_generation_ends_at_a_plain_text_end_of_turn(template: str, new_tokens: int) -> None:
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_config(template=template)).eval()
    ids, pixels = _prompt(model, 1), torch.randn(1, 3, 16, 16)
    stop = () if template == "chatml" else ("\n",)
    assert model.generation_config().stop_strings == stop  # from the config, whether a processor is attached or not
    if stop:
        with pytest.raises(ConfigError, match="need the model's tokenizer"):
            model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, eos_token_id=())
    model.processor = _NewlineDecoder()
    out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, eos_token_id=())
    assert out.shape[1] - ids.shape[1] == new_tokens
    assert model.generation_config(stop_strings=["b"]).stop_strings == ("b",)  # an explicit choice wins


def _text_model(bos: bool) -> VisionLanguageModel:
    """The tiny LM loaded text-only with a word-level tokenizer (ids 0-5: <unk> <s> </s> <pad> a b) that puts `<s>`
    in front of every text when `bos`."""
    words = ["<unk>", "<s>", "</s>", "<pad>", "a", "b"]
    backend = BackendTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = Tokenizer(backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=None)
    torch.manual_seed(0)
    return VisionLanguageModel(tiny_config(), vision=False, tokenizer=tokenizer).eval()


@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_an_empty_prompt_is_refused_unless_the_tokenizer_adds_bos(mode: str) -> None:
    model = _text_model(bos=False)
    with pytest.raises(PromptError, match=r"no tokens.*give non-empty text"):
        getattr(model, mode)(**model.processor(text=""), max_new_tokens=2)
    model = _text_model(bos=True)
    inputs = model.processor(text="")
    assert inputs["input_ids"].tolist() == [[1]]
    out = model.generate(**inputs, max_new_tokens=2, eos_token_id=())
    streamed = torch.stack(list(model.stream(**inputs, max_new_tokens=2, eos_token_id=())), dim=1)
    assert out.shape == (1, 3) and torch.equal(out[:, 1:], streamed)


NAN = float("nan")


@pytest.mark.parametrize("mode", ["generate", "stream"])
@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        (dict(max_length=50), r"max_length \(use max_new_tokens"),
        (dict(num_beams=2), "beam search is not implemented"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be an int"),
        (dict(max_new_tokens=True), "max_new_tokens must be an int"),
        (dict(top_k=2.5), "top_k must be an int"),
        (dict(temperature=NAN), "temperature must be finite"),
        (dict(do_sample=True, temperature=NAN), "temperature must be finite"),
        (dict(repetition_penalty=NAN), "repetition_penalty must be finite"),
        (dict(stop_strings=[""]), "an empty stop string"),
    ],
)
def test_bad_generation_settings_are_config_errors_on_both_paths(mode: str, settings: dict, pattern: str) -> None:
    """Refused when generate/stream is called, before any token is computed."""
    model = _text_model(bos=True)
    with pytest.raises(ConfigError, match=pattern):
        getattr(model, mode)(input_ids=torch.tensor([[4, 5]]), **settings)


def test_one_stop_string_is_one_stop_string() -> None:
    assert _text_model(bos=True).generation_config(stop_strings="ab").stop_strings == ("ab",)


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_ids_outside_the_vocabulary_are_a_prompt_error(bad: int) -> None:
    model = VisionLanguageModel(tiny_config()).eval()
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(PromptError, match=rf"id\(s\) \[{bad}\] outside the vocabulary"):
        model(input_ids=ids)
    with pytest.raises(PromptError, match="outside the vocabulary"):
        model.generate(input_ids=ids, max_new_tokens=1, stop_strings=())


def test_generation_never_emits_the_image_token() -> None:
    """A reply holding the image token could not be fed back as text (its count would not match any image), so a
    VLM's generation suppresses it; a model whose head prefers it shows the suppression is what keeps it out."""
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_config()).eval()
    ids, pixels = _prompt(model, 1), torch.randn(1, 3, 16, 16)

    def prefer_the_image_token(module: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_add(-1, torch.tensor([IMAGE_TOKEN]), torch.full((*logits.shape[:-1], 1), 100.0))

    model.language_model.lm_head.register_forward_hook(prefer_the_image_token)
    settings = {"input_ids": ids, "pixel_values": pixels, "max_new_tokens": 4, "eos_token_id": ()}
    assert IMAGE_TOKEN not in model.generate(**settings)[0, ids.shape[1] :].tolist()
    assert model.generation_config().suppress_tokens == (IMAGE_TOKEN,)
    unsuppressed = model.generate(**settings, suppress_tokens=())[0, ids.shape[1] :].tolist()
    assert unsuppressed == [IMAGE_TOKEN] * 4
