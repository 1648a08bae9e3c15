"""Chained model folders: a model stored as what differs from the folders it was made from, plus references to them.

A training stage that tunes the connector of a 7B model need not write the 7B weights it left alone. Its model folder
is a vlbridge checkpoint (config.json with the whole ModelConfig, the processor's files) whose config.json also names
its bases: each a folder (a vlbridge or HF checkpoint, or a CLIP/SigLIP vision tower, whose tensors are the model's
`vision_encoder.*`) with the SHA-256 of its files. model.safetensors then holds only the tensors that differ from the
bases' (trained, or new); a tensor that extends a base's along its first dimension (a vocabulary grown by `<image>`)
holds only the new rows. A LoRA stage's folder also holds the adapter in PEFT's layout (adapter_model.safetensors,
adapter_config.json): its merged weights are not stored but recomputed from the base as the merge computed them,
W + (alpha / r) * (B @ A) (Hu et al., 2021; the order of operations peft's merge uses, so the result is bitwise the
same). A tensor is left out only when recomputing it from the bases gives it bit for bit, so a load of the folder
gives the weights the stage ended with, exactly.

A base may itself be chained: loading follows the chain. Each base is named by its absolute path and, when it lies
in the same tree as the folder (a training run's folder), by its path relative to the folder too, which a load tries
first: a run folder moved or copied whole still loads. A base that is missing, or whose files changed since the
folder was written (hash mismatch), raises CheckpointError naming it. `save_whole` writes the whole model instead
(what a user ships), each tensor the bases hold unchanged in the dtype the base stores it in, so a bf16 base stays
bf16 in the saved model rather than doubling as float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vlbridge.atomic import atomic_path, write_safetensors, write_text
from vlbridge.config import ModelConfig, to_dict
from vlbridge.errors import CheckpointError
from vlbridge.files import open_safetensors, read_json_object
from vlbridge.model.file_hash import file_sha256
from vlbridge.model.save import FORMAT, FORMAT_VERSION, WEIGHTS, save_checkpoint, tied_keys
from vlbridge.model.weights import (
    TOWER_PREFIX,
    index_weights,
    read_config,
    tower_index,
    weight_files,
)

if TYPE_CHECKING:
    from vlbridge.model.processor import Processor

KINDS = ("model", "vision_tower")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
LM_PREFIX = "language_model."
MAX_DEPTH = 64


@dataclass(frozen=True)
class BaseRef:
    """A folder a chained model takes tensors from: a model checkpoint, or a CLIP/SigLIP tower (`vision_tower`)."""

    path: Path
    kind: str = "model"


@dataclass(frozen=True)
class Source:
    """Where one tensor of a (chained) checkpoint comes from: its shape, and how to read it (in its stored dtype)."""

    shape: tuple[int, ...]
    read: Callable[[], Tensor]


def folder_digest(path: Path) -> str:
    """SHA-256 over a checkpoint folder's config.json, weight files and adapter files (names and each file's SHA-256,
    remembered while the file is unchanged: `model/file_hash.py`)."""
    digest = hashlib.sha256()
    files = [path / "config.json", *weight_files(path)]
    files += [path / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (path / name).is_file()]
    for file in files:
        digest.update(f"{file.name}\n".encode())
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


def _bases(path: Path) -> list[dict[str, str]] | None:
    """The `base` list of a chained folder's config.json; None for a whole checkpoint."""
    raw = read_json_object(path / "config.json")
    if raw.get("format") != FORMAT or "base" not in raw:
        return None
    bases = raw["base"]
    fields = ("path", "sha256")
    if not isinstance(bases, list) or not all(
        isinstance(b, dict)
        and b.get("kind") in KINDS
        and all(isinstance(b.get(f), str) for f in fields)
        and isinstance(b.get("relative", ""), str)
        for b in bases
    ):
        raise CheckpointError(f"{path / 'config.json'}: its `base` list is not what vlbridge writes; save it again")
    return bases


def is_chained(path: Path) -> bool:
    """Whether `path` is a chained folder (config.json names bases)."""
    return (path / "config.json").is_file() and _bases(path) is not None


def _read(file: Path, key: str) -> Tensor:
    with open_safetensors(file) as handle:
        return handle.get_tensor(key)


def _file_sources(index: Mapping[str, tuple[Path, str]], prefix: str = "") -> dict[str, Source]:
    """Sources of indexed tensors (headers read once per file), their names prefixed by `prefix`."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, (file, key) in index.items():
        by_file.setdefault(file, []).append((name, key))
    out = {}
    for file, names in by_file.items():
        with open_safetensors(file) as handle:
            for name, key in names:
                shape = tuple(handle.get_slice(key).get_shape())
                out[prefix + name] = Source(shape, partial(_read, file, key))
    return out


def _base_sources(ref: BaseRef, depth: int) -> dict[str, Source]:
    if ref.kind == "vision_tower":
        return _file_sources(tower_index(ref.path), TOWER_PREFIX)
    return sources(ref.path, depth + 1)


def _base_path(entry: dict[str, str], folder: Path) -> Path:
    """Where the base `entry` names is: its path relative to `folder` when it was stored so and exists there (the run
    folder was moved or copied whole), else its absolute path."""
    if "relative" in entry:
        relative = folder / entry["relative"]
        if (relative / "config.json").is_file():
            return relative
    return Path(entry["path"])


def _check_base(entry: dict[str, str], folder: Path) -> BaseRef:
    """The base `entry` names, after checking that it exists and its files hash as when `folder` was written."""
    path = _base_path(entry, folder)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{folder} stores only what changed against its base {path}, which is missing; restore that folder (or "
            "load and save the model whole where the base still exists)"
        )
    if folder_digest(path) != entry["sha256"]:
        raise CheckpointError(
            f"{folder} stores only what changed against its base {path}, whose files changed since it was written "
            f"(SHA-256 {entry['sha256'][:12]} expected); restore the base as it was"
        )
    return BaseRef(path, entry["kind"])


def _merged(weight: Source, a: Source, b: Source, scale: float) -> Tensor:
    """W + scale * (B @ A) in float32, as peft's merge computes it for a float32 model."""
    merged = weight.read().to(torch.float32)
    merged += (b.read().float() @ a.read().float()).mul_(scale)  # (out, r) @ (r, in) -> (out, in)
    return merged


def _grown(base: Source, rows: Source) -> Tensor:
    tail = rows.read()
    return torch.cat([base.read().to(tail.dtype), tail])


def _adapter_sources(folder: Path, out: dict[str, Source]) -> dict[str, Source]:
    """The LM weights the adapter in `folder` merges into, as sources of their merged values (over `out`'s)."""
    raw = read_json_object(folder / ADAPTER_CONFIG)
    if not all(isinstance(raw.get(key), (int, float)) and raw[key] > 0 for key in ("r", "lora_alpha")):
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} has no positive r and lora_alpha; save the model again")
    scale = raw["lora_alpha"] / raw["r"]
    adapter = _file_sources({k: (folder / ADAPTER_WEIGHTS, k) for k in _keys(folder / ADAPTER_WEIGHTS)})
    merged = {}
    for key in adapter:
        if ".lora_A." not in key:
            continue
        module = key.removeprefix(PEFT_PREFIX).split(".lora_A.")[0]
        name = f"{LM_PREFIX}{module}.weight"
        b = adapter.get(key.replace(".lora_A.", ".lora_B."))
        if name not in out or b is None:
            raise CheckpointError(f"adapter of {folder} does not fit its base: {name} or its lora_B is missing")
        merged[name] = Source(out[name].shape, partial(_merged, out[name], adapter[key], b, scale))
    return merged


def _keys(file: Path) -> list[str]:
    with open_safetensors(file) as handle:
        return list(handle.keys())


def sources(path: Path, depth: int = 0) -> dict[str, Source]:
    """Every tensor of the checkpoint at `path` by our name, its chain of bases followed (and checked)."""
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{path}: the chain of bases is longer than {MAX_DEPTH} folders (a cycle?)")
    bases = _bases(path)
    if bases is None:
        return _file_sources(index_weights(path, read_config(path)[1]))
    out: dict[str, Source] = {}
    for entry in bases:
        out.update(_base_sources(_check_base(entry, path), depth))
    if (path / ADAPTER_CONFIG).is_file():
        out.update(_adapter_sources(path, out))
    grown = read_json_object(path / "config.json").get("grown_rows", {})
    for name, source in _file_sources(index_weights(path, None)).items():
        if name in grown:
            base = out[name]
            out[name] = Source((base.shape[0] + source.shape[0], *base.shape[1:]), partial(_grown, base, source))
        else:
            out[name] = source
    return out


def _stored(name: str, tensor: Tensor, base: dict[str, Source]) -> tuple[Tensor | None, int | None]:
    """(what to store of `tensor`: None when the bases give it, else it or its rows past the base's; those rows)."""
    source = base.get(name)
    if source is None:
        return tensor, None
    if source.shape == tuple(tensor.shape):
        return (None, None) if torch.equal(source.read().to(tensor.dtype), tensor) else (tensor, None)
    rows = source.shape[0] if source.shape else 0
    extends = source.shape[1:] == tuple(tensor.shape[1:]) and 0 < rows < tensor.shape[0]
    if extends and torch.equal(source.read().to(tensor.dtype), tensor[:rows]):
        return tensor[rows:], rows
    return tensor, None


def _base_entries(
    bases: list[BaseRef], folder: Path, root: Path | None
) -> tuple[list[dict[str, str]], dict[str, Source]]:
    """The `base` list `folder` stores (each base's absolute path, and its path relative to `folder` when both lie
    under `root`), and every tensor the bases hold."""
    entries, out = [], {}
    root = root.resolve() if root is not None else None
    for ref in bases:
        path = ref.path.resolve()
        entry = {"path": str(path), "kind": ref.kind, "sha256": folder_digest(path)}
        if root is not None and path.is_relative_to(root) and folder.resolve().is_relative_to(root):
            entry["relative"] = os.path.relpath(path, folder.resolve())
        entries.append(entry)
        out.update(_base_sources(BaseRef(path, ref.kind), 0))
    return entries, out


def save_chained(
    path: str | Path,
    state: Mapping[str, Tensor],
    config: ModelConfig,
    processor: Processor | None,
    bases: list[BaseRef],
    adapter: Path | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """Write `state` into `path` as a chained folder on `bases` (plus, when given, the PEFT adapter folder `adapter`
    whose merge the state holds); returns what was stored (`tensors`, `elements`). Without bases, a whole checkpoint.
    Bases inside `root` (a run folder) are also named by their path relative to `path`, which a load tries first, so
    the tree under `root` still loads after it is moved or copied whole."""
    path = Path(path)
    if not bases:
        save_checkpoint(path, state, config, processor)
        return {"tensors": len(state), "elements": sum(t.numel() for t in state.values())}
    entries, base = _base_entries(bases, path, root)
    path.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if adapter is None:
            (path / name).unlink(missing_ok=True)  # an earlier attempt's adapter must not merge into this model
            continue
        with atomic_path(path / name) as tmp:
            shutil.copyfile(adapter / name, tmp)
    if adapter is not None:
        base.update(_adapter_sources(path, base))
    stored, grown = {}, {}
    tied = tied_keys(config)
    for name, tensor in state.items():
        if name in tied:
            continue
        kept, rows = _stored(name, tensor.detach(), base)
        if kept is not None:
            stored[name] = kept.contiguous()
        if rows is not None:
            grown[name] = rows
    write_safetensors(path / WEIGHTS, stored)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": to_dict(config), "base": entries}
    if grown:
        meta["grown_rows"] = grown
    write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    if processor is not None:
        processor.save_pretrained(path)
    return {"tensors": len(stored), "elements": sum(t.numel() for t in stored.values())}


def save_whole(
    path: str | Path, state: Mapping[str, Tensor], config: ModelConfig, processor: Processor | None, origin: Path | None
) -> None:
    """Write `state` whole into `path`; a tensor that `origin` (a checkpoint folder, chained or not) holds with the
    same values is written in `origin`'s dtype (a bf16 base stays bf16), every other one as it is."""
    base = sources(origin) if origin is not None else {}
    out = {}
    for name, tensor in state.items():
        source = base.get(name)
        value = source.read() if source is not None and source.shape == tuple(tensor.shape) else None
        same = value is not None and torch.equal(value.to(tensor.dtype), tensor)
        out[name] = value if same else tensor
    save_checkpoint(path, out, config, processor)
