"""Rewrite a GGUF file at another tensor type (F32, F16 or Q8_0) with the `gguf` package, for llama.cpp timings on the
exact weights vlbridge runs.

SmolLM2-135M-Instruct ships only as a Q4_1 GGUF. vlbridge's fp32 model holds its weights dequantised, so llama.cpp's
F32 file must hold the same dequantised values, and its F16 / Q8_0 files those values rounded the way llama.cpp's
converter would: every tensor of two or more dimensions at the new type, one-dimensional tensors (the RMSNorm weights)
kept in F32. All key/value metadata (hyper-parameters, tokenizer, chat template) is copied; `general.file_type` is set
to the new type. Q8_0 is GGML's block format: 32 weights per block sharing one f16 scale.
"""

from __future__ import annotations

from pathlib import Path

from vlbridge.atomic import atomic_path
from vlbridge.errors import CheckpointError, ConfigError

FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0"}
"""Target tensor type -> the `gguf.LlamaFileType` member written as `general.file_type`."""


def rewrite_gguf(source: Path, target: Path, ftype: str) -> Path:
    """Write `source` to `target` with every tensor of two or more dimensions dequantised and stored as `ftype`
    (F32, F16 or Q8_0), one-dimensional tensors as F32, all metadata copied. Written atomically; returns `target`."""
    import gguf

    if ftype not in FILE_TYPES:
        raise ConfigError(f"cannot write GGUF tensors as {ftype!r}; choose one of {sorted(FILE_TYPES)}")
    reader = gguf.GGUFReader(source)
    arch = reader.get_field("general.architecture")
    if arch is None:
        raise CheckpointError(f"{source} has no general.architecture key; it is not a model GGUF")
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(tmp, arch.contents())  # the writer adds general.architecture itself
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
                continue  # header fields the writer computes, and the file type set below
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
        writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[ftype]])
        qtype = gguf.GGMLQuantizationType[ftype]
        for tensor in reader.tensors:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # numpy shape: GGUF shape reversed
            kind = qtype if values.ndim > 1 else gguf.GGMLQuantizationType.F32
            data = gguf.quants.quantize(values, kind)
            writer.add_tensor(tensor.name, data, raw_dtype=kind if kind == gguf.GGMLQuantizationType.Q8_0 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target


def rewritten(source: Path, cache: Path, ftype: str) -> Path:
    """`source` at `ftype` in `cache` (`<name>.<ftype>.gguf`), written on first use."""
    target = cache / f"{source.stem.rsplit('.', 1)[0]}.{ftype}.gguf"
    return target if target.is_file() else rewrite_gguf(source, target, ftype)
