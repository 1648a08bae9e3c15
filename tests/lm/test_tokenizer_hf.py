"""Oracle tests: our Tokenizer encodes, decodes and renders chat templates exactly as transformers does.

Tokenizers are trained here on a few sentences (nothing is downloaded), wrapped in transformers' own Llama / Qwen2
tokenizer classes and saved with save_pretrained, so the folders look like real checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer
from transformers import AutoTokenizer, LlamaTokenizer, Qwen2Tokenizer

from vlbridge.lm.tokenizer import Tokenizer

CORPUS = [
    "Hello world, this is a tiny corpus.",
    "The cat sat on the mat. What is in the image?\nDescribe it.",
    "A red circle is left of a blue square; there are 3 objects.",
    "naïve café 東京 and émoji-free text",
] * 4
TEXTS = [
    "Hello world",
    "",
    "  two leading spaces and trailing  ",
    "What is in the image?\nDescribe it.",
    "<image>\nWhat is in the image?",
    "before<image>after <image> between",
    "unseen: ü ß Ω 東京 🙂",
    "special tokens in text: <s> </s> <|im_start|>user\nhi<|im_end|>",
]
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3ISH = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim "
    "+ '<|eot_id|>' %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    "{{ messages | tojson }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ eos_token }}"
    "{% endfor %}"
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image>\nWhat colour is the circle?  "},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And the square? \u00e9"},
]


def _vocab_merges(tok: BackendTokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def llama_dir(path: Path) -> Path:
    """A Llama-style (SentencePiece BPE with byte fallback, BOS added) tokenizer saved by LlamaTokenizer."""
    tok = BackendTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=specials))
    hf = LlamaTokenizer(*_vocab_merges(tok), add_bos_token=True)
    hf.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    hf.chat_template = CHATML
    hf.save_pretrained(path)
    return path


def qwen2_dir(path: Path) -> Path:
    """A Qwen2-style (byte-level BPE, no BOS, ChatML specials) tokenizer saved by Qwen2Tokenizer."""
    tok = BackendTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    hf = Qwen2Tokenizer(
        *_vocab_merges(tok), eos_token="<|im_end|>", extra_special_tokens=["<|im_start|>", "<|im_end|>"]
    )
    hf.chat_template = CHATML
    hf.save_pretrained(path)
    return path


def legacy_llama_dir(path: Path, legacy: bool) -> Path:
    """A hand-written Llama-2-era tokenizer.json (Prepend/Replace normalizer, no pre-tokenizer) + its config."""
    tok = BackendTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizerFast", "legacy": legacy, "add_bos_token": True, "chat_template": CHATML}
    config |= {"bos_token": {"__type": "AddedToken", "content": "<s>", "special": True}, "eos_token": "</s>"}
    (path / "tokenizer_config.json").write_text(json.dumps(config | {"unk_token": "<unk>"}))
    return path


BUILDERS = {
    "llama": llama_dir,
    "qwen2": qwen2_dir,
    "llama_legacy_false": lambda p: legacy_llama_dir(p, legacy=False),
    "llama_legacy_true": lambda p: legacy_llama_dir(p, legacy=True),
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def _assert_same(ours: Tokenizer, hf, texts: list[str] = TEXTS) -> None:
    for text in texts:
        expected = hf(text)["input_ids"]
        assert ours.encode(text) == expected, text
        assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"], text
        for skip in (True, False):
            assert ours.decode(expected, skip_special_tokens=skip) == hf.decode(expected, skip_special_tokens=skip)


def test_encode_decode_match_transformers(tokenizer_dir: Path) -> None:
    ours, hf = Tokenizer.from_dir(tokenizer_dir), AutoTokenizer.from_pretrained(tokenizer_dir)
    _assert_same(ours, hf)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
    )
    assert ours.vocab_size == len(hf)


def test_bos_follows_the_model_family(tmp_path: Path) -> None:
    llama, qwen = Tokenizer.from_dir(llama_dir(tmp_path / "l")), Tokenizer.from_dir(qwen2_dir(tmp_path / "q"))
    assert llama.encode("Hello")[0] == llama.bos_token_id
    assert qwen.bos_token_id is None and qwen.encode("Hello") == qwen.encode("Hello", add_special_tokens=False)


@pytest.mark.parametrize(("bos", "eos"), [(False, True), (True, True), (True, False)])
def test_explicit_add_bos_eos_match_transformers_kwargs(tmp_path: Path, bos: bool, eos: bool) -> None:
    path = llama_dir(tmp_path)
    hf = AutoTokenizer.from_pretrained(path, add_bos_token=bos, add_eos_token=eos)
    ours = Tokenizer.from_dir(path, add_bos_token=bos, add_eos_token=eos)
    _assert_same(ours, hf, TEXTS[:4])
    assert (ours.encode("Hello")[0] == ours.bos_token_id) is bos
    assert (ours.encode("Hello")[-1] == ours.eos_token_id) is eos


def test_config_add_bos_token_is_ignored_like_transformers(tmp_path: Path) -> None:
    """transformers 5 drops add_bos_token/add_eos_token from tokenizer_config.json when tokenizer.json exists."""
    path = llama_dir(tmp_path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(config | {"add_bos_token": False, "add_eos_token": True}))
    hf, ours = AutoTokenizer.from_pretrained(path), Tokenizer.from_dir(path)
    _assert_same(ours, hf, TEXTS[:4])
    assert ours.encode("Hello")[0] == ours.bos_token_id


def test_saved_tokenizer_loads_in_transformers(tokenizer_dir: Path, tmp_path: Path) -> None:
    ours = Tokenizer.from_dir(tokenizer_dir)
    ours.add_special_tokens(["<extra_image>"])
    ours.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    _assert_same(ours, hf, [*TEXTS, "x<extra_image>y"])
    _assert_same(Tokenizer.from_dir(tmp_path), hf, [*TEXTS, "x<extra_image>y"])
    expected = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(MESSAGES) == expected


@pytest.mark.parametrize("template", [CHATML, LLAMA3ISH])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tmp_path: Path, template: str, add_generation_prompt: bool) -> None:
    path = llama_dir(tmp_path)
    hf = AutoTokenizer.from_pretrained(path)
    hf.chat_template = template
    ours = Tokenizer.from_dir(path)
    ours.chat_template = template
    for messages in (MESSAGES, MESSAGES[1:2]):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
