"""Oracle tests: `vlbridge convert gguf` on tiny GGUF files written here with the gguf package's GGUFWriter gives the
logits and token ids transformers' own GGUF loading (`from_pretrained(..., gguf_file=...)`) gives for the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vlbridge
from hf_fixtures import CHAT_TEMPLATE, CORPUS
from vlbridge.cli.main import main
from vlbridge.errors import CheckpointError, ConfigError

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
TEXTS = ["a red circle is left of a blue square", "  two spaces, digits 123 and é", "USER: hi ASSISTANT:"]
KQUANT_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q3_K: (108,), Q.Q2_K: (80, 82)}
"""Byte offsets of the float16 scales in each K-quant block (random bytes there could spell inf or NaN)."""


def _byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """Tokens (GPT-2 byte alphabet), merges and llama.cpp token types of a tiny byte-level BPE with 3 specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<unk>", "<s>", "</s>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(pair) for pair in json.loads(tok.to_str())["model"]["merges"]]
    return tokens, merges, [3 if t in specials else 1 for t in tokens]


def _sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and llama.cpp token types of a tiny SentencePiece-style vocabulary as Llama 2 files hold it:
    <unk>, <s>, </s>, the 256 byte tokens, then word pieces with `▁` for spaces, best (earliest learned) first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200))
    vocab = tok.get_vocab()
    pieces = sorted(vocab, key=vocab.get)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    return tokens, [0.0] * 259 + [-float(i) for i in range(len(pieces))], types


def _quantise(values: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, Q]:
    """`values` stored as `qtype`; K-quants (which the gguf package cannot quantise) as random blocks with sane
    scales, since the test compares two readers of the same bytes, not a quantiser."""
    if qtype == Q.F32:
        return values, qtype
    if qtype == Q.F16:
        return values.astype(np.float16), qtype
    if qtype not in KQUANT_SCALES:
        return gguf.quants.quantize(values, qtype), qtype
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (values.size // block, size), dtype=np.uint8)
    for offset in KQUANT_SCALES[qtype]:
        scales = (rng.random(len(blocks)) * 0.01).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(values.shape[0], -1), qtype


def write_tiny_gguf(path: Path, qtype: Q, hidden: int = 64, tied: bool = False, vocab: str = "gpt2") -> Path:
    """A tiny random Llama GGUF (2 layers, GQA) with a chat template and a byte-level BPE tokenizer (`vocab` "gpt2",
    merges in the file) or a SentencePiece one ("llama", scores and no merges, as Llama 2 files); 2D weights whose
    rows fit `qtype`'s blocks are stored as `qtype`, norms as F32 (as llama.cpp stores them)."""
    rng = np.random.default_rng(0)
    if vocab == "gpt2":
        tokens, merges, types = _byte_level_vocab()
    else:
        tokens, scores, types = _sentencepiece_vocab()
    heads, kv_heads, ffn, layers = 4, 2, 2 * hidden, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(vocab)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if vocab == "gpt2":
        writer.add_tokenizer_pre("default")
        writer.add_add_bos_token(True)
        writer.add_token_merges(merges)
    else:
        writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (len(tokens), hidden)
    for i in range(layers):
        shapes.update(
            {
                f"blk.{i}.attn_norm.weight": (hidden,),
                f"blk.{i}.attn_q.weight": (hidden, hidden),
                f"blk.{i}.attn_k.weight": (kv_heads * head_dim, hidden),
                f"blk.{i}.attn_v.weight": (kv_heads * head_dim, hidden),
                f"blk.{i}.attn_output.weight": (hidden, hidden),
                f"blk.{i}.ffn_norm.weight": (hidden,),
                f"blk.{i}.ffn_gate.weight": (ffn, hidden),
                f"blk.{i}.ffn_up.weight": (ffn, hidden),
                f"blk.{i}.ffn_down.weight": (hidden, ffn),
            }
        )
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
            continue
        values = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        if values.shape[1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            writer.add_tensor(name, values)
            continue
        data, raw = _quantise(values, qtype, rng)
        writer.add_tensor(name, data, raw_dtype=raw if raw not in (Q.F32, Q.F16) else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("qtype", "hidden"),
    [(Q.F32, 64), (Q.F16, 64), (Q.BF16, 64), (Q.Q8_0, 64), (Q.Q4_0, 64), (Q.Q4_1, 64), (Q.Q4_K, 256), (Q.Q6_K, 256)],
)
def test_converted_gguf_matches_transformers_gguf_loading(qtype: Q, hidden: int, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = write_tiny_gguf(tmp_path / "tiny.gguf", qtype, hidden=hidden, tied=qtype == Q.Q8_0)
    assert main(["convert", "gguf", str(file), "--out", str(tmp_path / "hf")]) == 0
    ours, processor = vlbridge.load(tmp_path / "hf", vision=False)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name, dtype=torch.float32).eval()
    their_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=file.name)
    assert ours.config.language_model.tie_word_embeddings is (qtype == Q.Q8_0)
    mine = ours.language_model.state_dict()
    for key, weight in theirs.state_dict().items():  # dequantised and un-permuted alike, bit for bit
        assert torch.equal(mine[key], weight), key
    for text in TEXTS:  # logits agree to float32 summation order (the weights are equal): 1e-4 of their span
        ids = processor.tokenizer.encode(text)
        assert ids == their_tokenizer(text)["input_ids"], text
        with torch.no_grad():
            logits, ref = ours(input_ids=torch.tensor([ids])).logits, theirs(torch.tensor([ids])).logits
        torch.testing.assert_close(logits, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
    chat = [{"role": "user", "content": "hi"}]
    assert processor.tokenizer.apply_chat_template(chat) == "USER: hi ASSISTANT:"


def test_sentencepiece_vocabulary_without_merges_tokenizes_as_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    file = write_tiny_gguf(tmp_path / "spm.gguf", Q.F16, vocab="llama")
    assert main(["convert", "gguf", str(file), "--out", str(tmp_path / "hf")]) == 0
    _, processor = vlbridge.load(tmp_path / "hf", vision=False)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=file.name)
    for text in [*TEXTS, "what colour is the triangle?\nthe triangle is green", "ünïcode ☃ bytes"]:
        ids = processor.tokenizer.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert ids[0] == 1  # llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise
        assert processor.tokenizer.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text


def test_not_a_llama_or_not_a_gguf_file_is_refused(tmp_path: Path) -> None:
    from vlbridge.deploy.gguf import convert_gguf

    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="architecture is 'gpt2'"):
        convert_gguf(tmp_path / "gpt2.gguf", tmp_path / "out")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a model"):
        convert_gguf(tmp_path / "gpt2.gguf", tmp_path / "out")
