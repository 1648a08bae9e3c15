"""Loading models: vlbridge's own format (written by `model/save.py`) and the HF llava layout, with strict keys.

A checkpoint directory holds config.json (every choice), model.safetensors (or HF shards with
model.safetensors.index.json), and the processor's tokenizer/preprocessor files; a chained one (a training stage's
model, `model/chain.py`) holds only what it changed and names the folders the rest comes from, which a load follows.
`vision=False` reads no vision weights at all, so a text-only deployment never holds them in memory. A damaged file
(empty, cut short, garbage, a shard index naming missing shards or files outside the folder) raises CheckpointError
naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vlbridge.config import ModelConfig
from vlbridge.devices import resolve_device
from vlbridge.dtypes import resolve_dtype
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.files import open_safetensors
from vlbridge.lm.int8 import QUANTIZATIONS, align_weights, int8_skeleton, quantize_linears
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model import chain
from vlbridge.model.processor import processor_for
from vlbridge.model.save import tied_keys
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.model.weights import VISION_PREFIXES, assign, index_weights, preview, read_config


def default_model_dir() -> Path:
    """Where the embedded default model ships inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "default"


STORED = "stored"
"""The `dtype` of `load` that keeps each weight in the dtype its file stores it in (how training loads: frozen parts
stay bf16 where the file is bf16, vlbridge.train.precision)."""


def _target_dtype(name: str, tensor: torch.Tensor, model_dtype: torch.dtype, stored: set[str] | None) -> torch.dtype:
    """The dtype the file's `tensor` takes in the model: the model's, or its own for a floating-point parameter when
    loading keeps stored dtypes (`stored` then names the model's parameters)."""
    if stored is not None and name in stored and tensor.is_floating_point():
        return tensor.dtype
    return model_dtype


def load_weights(
    model: VisionLanguageModel,
    path: Path,
    rules: tuple[tuple[str, str], ...] | None,
    fresh: tuple[str, ...] = (),
    stored: bool = False,
) -> None:
    """Stream the checkpoint's tensors into `model`, one at a time, so loading needs no second copy in memory.

    A parameter of `model` on the meta device (`build_empty`) is replaced by the file's tensor in that parameter's
    dtype (with `stored`, a floating-point parameter takes the dtype the file stores it in), so each weight is read
    and written once; a real one is overwritten in place.

    Strict: every model key must come from the checkpoint except those under the `fresh` prefixes (parts kept as
    initialised, e.g. a vision plug-in added to a text LLM, or a new connector; the checkpoint's own tensors under
    those prefixes are ignored), and every other checkpoint key must fit the model; a model
    without vision skips the checkpoint's vision tensors without reading them. Violations raise CheckpointError.
    """
    keep = {name for name, _ in model.named_parameters()} if stored else None
    if chain.is_chained(path):
        _load_chained(model, path, fresh, vision=model.has_vision, keep=keep)
        return
    index = index_weights(path, rules)
    if not model.has_vision:
        index = {k: v for k, v in index.items() if not k.startswith(VISION_PREFIXES)}
    tied = tied_keys(model.config)
    params = {k: v for k, v in model.state_dict().items() if k not in tied}
    expected = {k for k in params if not k.startswith(fresh)} if fresh else set(params)
    missing = sorted(expected - set(index))
    unexpected = sorted(k for k in set(index) - expected - tied if not (fresh and k.startswith(fresh)))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {preview(unexpected)}")
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: " + "; ".join(parts))
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(index[name][0], []).append(name)
    wrong = []
    # Conversions to the model's dtype run on a few threads, as transformers' loading does (torch releases the GIL):
    # one thread converted SmolLM2-135M to bf16 ~2x slower on 2 cores (benchmarks/load_time.py).
    with torch.no_grad(), ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for file, names in by_file.items():
            for chunk in _chunks(names, params):
                wrong += _load_chunk(model, file, [(name, index[name][1]) for name in chunk], params, keep, pool)
    if wrong:
        raise CheckpointError(f"checkpoint {path} has weights of the wrong shape: {preview(wrong)}")
    _settle(model)


CHUNK_BYTES = 32 << 20
"""Weights read through one mapping of their file at a time. A mapping's pages stay resident until it is closed and
its tensors are gone, so a load that converts dtypes (an fp32 file loaded in bf16) reads a chunk, converts it and
lets the chunk's pages go: its peak is the converted weights plus about a chunk, not plus the whole file."""


def _load_chunk(
    model: VisionLanguageModel,
    file: Path,
    keys: list[tuple[str, str]],
    params: dict[str, torch.Tensor],
    keep: set[str] | None,
    pool: ThreadPoolExecutor,
) -> list[str]:
    """Put the tensors `keys` (model name, file key) of `file` in place through one mapping of it, converting dtypes
    on `pool`; returns the shape mismatches found."""
    wrong, converted = [], []
    with open_safetensors(file) as handle:
        for name, key in keys:
            shape = tuple(handle.get_slice(key).get_shape())
            if shape != tuple(params[name].shape):
                wrong.append(f"{name} {shape} != {tuple(params[name].shape)}")
            elif params[name].is_meta:
                tensor = handle.get_tensor(key)
                dtype = _target_dtype(name, tensor, params[name].dtype, keep)
                converted.append((name, pool.submit(tensor.to, dtype)))
            else:
                params[name].copy_(handle.get_tensor(key))
        for name, future in converted:
            assign(model, name, future.result())
    return wrong


def _chunks(names: list[str], params: dict[str, torch.Tensor]) -> list[list[str]]:
    """`names`, largest tensor first (a large table is read while little else is resident), cut into runs of about
    CHUNK_BYTES of the model's tensors (a larger tensor alone)."""
    sizes = {name: params[name].numel() * params[name].element_size() for name in names}
    chunks: list[list[str]] = [[]]
    size = 0
    for name in sorted(names, key=sizes.__getitem__, reverse=True):
        nbytes = sizes[name]
        if chunks[-1] and size + nbytes > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += nbytes
    return chunks


def _load_chained(
    model: VisionLanguageModel,
    path: Path,
    fresh: tuple[str, ...] = (),
    vision: bool = True,
    keep: set[str] | None = None,
) -> None:
    """Write the chained checkpoint's tensors into `model` (meta parameters replaced, real ones overwritten), each
    read once and converted to its parameter's dtype (those `keep` names: kept in their stored dtype). Every key of
    `model` must come from the chain, except those under the `fresh` prefixes (kept as initialised) and, when not
    `vision`, the vision parts; else CheckpointError."""
    found = chain.sources(path)
    params = {k: v for k, v in model.state_dict().items() if k not in tied_keys(model.config)}
    skip = fresh + (() if vision else VISION_PREFIXES)
    expected = {k for k in params if not (skip and k.startswith(skip))}
    missing = sorted(expected - set(found))
    present = sorted(expected & set(found))
    wrong = [f"{k} {found[k].shape} != {tuple(params[k].shape)}" for k in present if found[k].shape != params[k].shape]
    if missing or wrong:
        raise CheckpointError(
            f"chained checkpoint {path} does not fit the model its config describes: missing {preview(missing)}; "
            f"wrong shapes {preview(wrong)}"
        )
    with torch.no_grad():
        for name in sorted(expected):
            value = found[name].read()
            if params[name].is_meta:
                assign(model, name, value.to(_target_dtype(name, value, params[name].dtype, keep)))
            else:
                params[name].copy_(value)
    _settle(model)


def _settle(model: VisionLanguageModel) -> None:
    """After a load put the tensors in place: int8 weights mapped off the allocator's boundary copied onto it
    (`int8.align_weights`, which PyTorch's int8 kernel needs), then the LM's tied weights tied."""
    align_weights(model.language_model)
    model.language_model.tie_weights()


def build_empty(config: ModelConfig, vision: bool = True, dtype: torch.dtype | None = None) -> VisionLanguageModel:
    """The model with every parameter and buffer on the meta device, in `dtype` (None: float32): no memory taken and
    no initialiser doing work, so a load writes each weight once, straight from the file (`load_weights`)."""
    with torch.device("meta"):
        model = VisionLanguageModel(config, vision=vision)
    return model.to(dtype=dtype)


def _check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")


def quantize_model(model: VisionLanguageModel, quantization: str) -> None:
    """Quantise the language model's linear layers in place (vlbridge.lm.int8), a tied head's embeddings becoming a
    lookup into its int8 table, and record it in `model.config`, so `save_pretrained` writes an int8 checkpoint. A
    model already quantised this way is left as it is."""
    _check_quantization(quantization)
    if model.config.quantization == quantization:
        return
    quantize_linears(model.language_model)
    model.language_model.tie_weights()
    model.config = dataclasses.replace(model.config, quantization=quantization)


def load(
    path: str | Path | None = None,
    vision: bool = True,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    quantize: str | None = None,
) -> tuple[VisionLanguageModel, Any]:
    """Load (model, processor) from a vlbridge or HF llava-layout directory; None loads the embedded default.

    `dtype` is a name from `vlbridge.dtypes` (fp32, bf16, fp16, or torch's spelling) or a torch dtype; None keeps
    the weights in float32 (with `quantize`, the float weights left: embeddings, norms, vision); `"stored"` keeps
    each weight in the dtype its file stores it in (a stage model: trained parts float32, a bf16 base's bf16).
    `quantize="int8"` quantises the LM's linear weights after loading; a checkpoint saved quantised loads as int8
    whatever `quantize` says, its int8 weights read as they are. Weights keep the file's layout (the decode kernels
    read it as it is, `vlbridge.lm.native`). A device this machine lacks raises ConfigError (vlbridge.devices)
    before any file is read."""
    if quantize is not None:
        _check_quantization(quantize)
    device = resolve_device(device)
    if path is None:
        path = default_model_dir()
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"the embedded default model is not shipped in this installation ({path}); pass a checkpoint "
                "directory (--model PATH: an HF llava-layout or vlbridge checkpoint)"
            )
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist; pass a vlbridge or HF llava checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is a file; pass the checkpoint directory that holds config.json")
    config, rules = read_config(path)
    tokenizer = Tokenizer.from_dir(path)
    torch_dtype = None if dtype in (None, STORED) else resolve_dtype(dtype)
    model = build_empty(config, vision=vision, dtype=torch_dtype)
    if config.quantization is not None:
        with torch.device("meta"):  # the checkpoint's int8 weights load into int8 layers, built empty too
            int8_skeleton(model.language_model)
            model.language_model.tie_weights()
    load_weights(model, path, rules, stored=dtype == STORED)
    if quantize is not None:
        quantize_model(model, quantize)
    model.processor = processor_for(model, tokenizer)
    model.to(device=device).eval()
    return model, model.processor
