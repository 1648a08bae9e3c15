"""benchmarks/_gguf_rewrite.py: a GGUF the test writes (Q4_1, Q8_0 and F32 tensors, metadata of every kind) rewritten
at F32, F16 and Q8_0 keeps its metadata and its (dequantised) weights; one-dimensional tensors stay F32."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._gguf_rewrite import rewrite_gguf, rewritten  # noqa: E402

from vlbridge.errors import ConfigError  # noqa: E402

Q = gguf.GGMLQuantizationType
METADATA = {
    "general.name": "tiny",
    "llama.block_count": 1,
    "llama.rope.freq_base": 10000.0,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.ggml.tokens": ["<s>", "a", "bé"],
    "tokenizer.ggml.token_type": [3, 1, 1],
    "tokenizer.chat_template": "{{ messages }}",
}


def _source(path: Path) -> dict[str, np.ndarray]:
    """A tiny llama-like GGUF at `path`; returns each tensor's float values as stored (after its own quantisation)."""
    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": (rng.standard_normal((8, 64)).astype(np.float32), Q.Q8_0),
        "blk.0.attn_q.weight": (rng.standard_normal((16, 64)).astype(np.float32), Q.Q4_1),
        "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), Q.F32),
    }
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(METADATA["general.name"])
    writer.add_block_count(METADATA["llama.block_count"])
    writer.add_rope_freq_base(METADATA["llama.rope.freq_base"])
    writer.add_add_bos_token(METADATA["tokenizer.ggml.add_bos_token"])
    writer.add_token_list(METADATA["tokenizer.ggml.tokens"])
    writer.add_token_types(METADATA["tokenizer.ggml.token_type"])
    writer.add_chat_template(METADATA["tokenizer.chat_template"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    stored = {}
    for name, (values, qtype) in tensors.items():
        data = gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if qtype != Q.F32 else None)
        stored[name] = gguf.quants.dequantize(data, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


@pytest.mark.parametrize(("ftype", "atol"), [("F32", 0.0), ("F16", 2e-3), ("Q8_0", 0.03)])
def test_rewrite_keeps_metadata_and_weights(tmp_path: Path, ftype: str, atol: float) -> None:
    stored = _source(tmp_path / "tiny.Q4_1.gguf")
    out = rewrite_gguf(tmp_path / "tiny.Q4_1.gguf", tmp_path / "out" / f"tiny.{ftype}.gguf", ftype)
    reader = gguf.GGUFReader(out)
    for key, value in METADATA.items():
        assert reader.get_field(key).contents() == value, key
    assert reader.get_field("general.architecture").contents() == "llama"
    assert (
        reader.get_field("general.file_type").contents()
        == gguf.LlamaFileType[f"{'ALL' if ftype == 'F32' else 'MOSTLY'}_{ftype}"]
    )
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(stored)
    for name, values in stored.items():
        tensor = got[name]
        assert tensor.tensor_type == (Q[ftype] if values.ndim > 1 else Q.F32), name
        back = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert back.shape == values.shape
        np.testing.assert_allclose(back, values, rtol=0, atol=atol if values.ndim > 1 else 0.0)
    assert not list((tmp_path / "out").glob(".*.tmp")), "temporary file left behind"


def test_rewritten_is_cached_and_unknown_types_are_refused(tmp_path: Path) -> None:
    _source(tmp_path / "tiny.Q4_1.gguf")
    first = rewritten(tmp_path / "tiny.Q4_1.gguf", tmp_path / "cache", "Q8_0")
    assert first == tmp_path / "cache" / "tiny.Q8_0.gguf"
    stamp = first.stat().st_mtime_ns
    assert rewritten(tmp_path / "tiny.Q4_1.gguf", tmp_path / "cache", "Q8_0").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="Q4_K"):
        rewrite_gguf(tmp_path / "tiny.Q4_1.gguf", tmp_path / "x.gguf", "Q4_K")
