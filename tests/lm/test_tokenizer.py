"""Tokenizer unit tests without transformers: loading, special tokens, BOS/EOS, saving and chat-template rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, processors

from vlbridge.errors import CheckpointError, ConfigError, DataError, PromptError
from vlbridge.lm.tokenizer import Tokenizer

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "a", "red", "circle", "is", "left", "of", "blue", "square", "."]


def backend(bos: bool = True) -> BackendTokenizer:
    """A word-level tokenizer over WORDS, adding `<s>` in front when `bos`."""
    tok = BackendTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def make(template: str | None = None, **kwargs) -> Tokenizer:
    return Tokenizer(backend(), bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=template, **kwargs)


def test_encode_decode_and_ids() -> None:
    tok = make()
    assert tok.encode("a red circle") == [1, 4, 5, 6]
    assert tok.encode("a red circle", add_special_tokens=False) == [4, 5, 6]
    assert tok.encode("a green circle", add_special_tokens=False) == [4, 0, 6]
    assert tok.decode([1, 4, 5, 6]) == "a red circle"
    assert tok.decode([1, 4, 5, 6], skip_special_tokens=False) == "<s> a red circle"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 3, None)
    assert tok.encode_batch(["a", "red"]) == [[1, 4], [1, 5]]
    assert tok.token_to_id("square") == 11 and tok.token_to_id("green") is None


def test_text_that_is_not_unicode_is_a_prompt_error() -> None:
    tok = make()
    with pytest.raises(PromptError, match=r"the text holds a lone surrogate '\\ud800' \(U\+D800\) at character 2"):
        tok.encode("a \ud800")
    with pytest.raises(PromptError, match=r"text 1 holds a lone surrogate '\\udc80' \(U\+DC80\) at character 0"):
        tok.encode_batch(["a", "\udc80 red"])
    with pytest.raises(PromptError, match="text 0 is a bytes, not a str"):
        tok.encode_batch([b"a"])


def test_decode_accepts_tensors() -> None:
    torch = pytest.importorskip("torch")
    assert make().decode(torch.tensor([1, 4, 5])) == "a red"


def test_add_special_tokens_grows_vocab_and_is_never_split() -> None:
    tok = make()
    before = tok.vocab_size
    tok.add_special_tokens(["<image>"])
    image = tok.token_to_id("<image>")
    assert tok.vocab_size == len(tok) == before + 1 and image == before
    assert tok.encode("a<image>red", add_special_tokens=False) == [4, image, 5]
    assert tok.decode([4, image, 5]) == "a red"


@pytest.mark.parametrize(
    ("bos", "eos", "expected"), [(True, True, [1, 4, 2]), (False, True, [4, 2]), (False, False, [4])]
)
def test_explicit_add_bos_eos_rebuild_the_post_processor(bos: bool, eos: bool, expected: list[int]) -> None:
    assert make(add_bos_token=bos, add_eos_token=eos).encode("a") == expected


def test_add_bos_without_a_bos_token_adds_nothing() -> None:
    tok = Tokenizer(backend(bos=False), bos_token=None, eos_token="</s>", pad_token=None, chat_template=None)
    assert tok.encode("a") == [4]
    tok = Tokenizer(backend(bos=False), None, "</s>", None, None, add_bos_token=True)
    assert tok.encode("a") == [4]


def test_missing_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is missing"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_reads_added_token_dicts_special_map_and_json_template(tmp_path: Path) -> None:
    backend(bos=False).save(str(tmp_path / "tokenizer.json"))
    eos = {"__type": "AddedToken", "content": "</s>", "lstrip": False, "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos, "pad_token": "<pad>"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "unk_token": "<unk>"}))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}!"}))
    tok = Tokenizer.from_dir(tmp_path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert tok.encode("a") == [4]  # no post-processor in tokenizer.json: no BOS, as transformers
    assert tok.decode([4, 2, 3]) == "a"  # named special tokens are registered as special
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_jinja_file_wins_over_config_template(tmp_path: Path) -> None:
    backend().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config"}))
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([]) == "jinja"


def test_save_round_trip(tmp_path: Path) -> None:
    tok = make("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tok.add_special_tokens(["<image>"])
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    again = Tokenizer.from_dir(tmp_path)
    for text in ["a red <image> circle", "blue square ."]:
        assert again.encode(text) == tok.encode(text)
    assert again.token_to_id("<image>") == tok.token_to_id("<image>")
    assert again.apply_chat_template([{"role": "user", "content": "x"}]) == "<s>x"
    assert (again.bos_token, again.eos_token, again.pad_token) == ("<s>", "</s>", "<pad>")


def test_chat_template_globals_and_filters() -> None:
    template = (
        "{% generation %}{{ messages | tojson }}{% endgeneration %}|{{ eos_token }}|{{ add_generation_prompt }}"
        "|{{ strftime_now('%Y') | length }}|{{ tools is none }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}|{{ m.content }}{% endfor %}"
    )
    messages = [{"role": "user", "content": "é<b>"}, {"role": "assistant", "content": "no"}]
    out = make(template).apply_chat_template(messages, add_generation_prompt=False)
    assert out == json.dumps(messages, ensure_ascii=False) + "|</s>|False|4|True|é<b>"


def test_template_raise_exception_is_a_data_error() -> None:
    tok = make("{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first!') }}{% endif %}")
    with pytest.raises(DataError, match="system first!"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_template_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        make("{% for m in messages %}").apply_chat_template([])


def test_no_template_points_to_built_in_templates() -> None:
    with pytest.raises(ConfigError, match=r"no chat template.*vicuna_v1.*`template`"):
        make().apply_chat_template([{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escapes() -> None:
    tok = make("{{ messages.__class__.__mro__ }}")
    with pytest.raises(DataError, match=r"unsafe|access"):
        tok.apply_chat_template([])
