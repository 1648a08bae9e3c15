"""Oracle test: a tokenizer trained and saved by vlbridge loads in transformers' AutoTokenizer and behaves the same."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from vlbridge.lm import templates
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.lm.tokenizer_train import train_tokenizer

CORPUS = ["What colour is the circle?\nred", "How many objects are there?\n3", "The text says CAT."] * 5
TEXTS = [
    "What colour is the square?",
    "",
    "  spaces\n\nand newlines\n",
    "unseen: ü 東京 🙂",
    "<|im_start|>user\n<image>\nhi<|im_end|>\n<s></s><pad>",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image>\nWhat colour is the circle?"},
    {"role": "assistant", "content": " red "},
    {"role": "user", "content": "And the square?"},
]


@pytest.mark.parametrize("template", templates.available())
def test_transformers_reads_the_saved_tokenizer(tmp_path: Path, template: str) -> None:
    ours = train_tokenizer(CORPUS, 300, template=template)
    ours.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    reloaded = Tokenizer.from_dir(tmp_path)
    assert len(hf) == ours.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (
        ours.bos_token_id,
        ours.eos_token_id,
        ours.pad_token_id,
        ours.unk_token_id,
    )
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert ours.encode(text) == reloaded.encode(text) == ids
        assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    for add_generation_prompt in (True, False):
        expected = templates.render(template, MESSAGES, add_generation_prompt=add_generation_prompt)
        rendered = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert rendered == expected
