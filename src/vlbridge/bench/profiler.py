"""The efficiency profiler behind `vlbridge bench profile` (SPEC sections 3 and 6): per image and per model, FLOPs by
part (analytical, see flops.py), prefill latency, peak memory and KV-cache bytes, as a table, JSON and a PNG plot.

Measurement runs the model as a user would (`model.generate(max_new_tokens=1)`: vision encoder, connector and LM
prefill into a fresh KV cache, i.e. time to first token) on a synthetic prompt of one image and `text_tokens` text
tokens, with real weights (a checkpoint) or random ones (a preset or YAML config). Latency is the median of
`repeats` timed runs after `warmup` untimed ones. Peak memory is what the first (cold) prefill adds on top of the
loaded model, one-time allocations included (an upper bound for later prefills): on CUDA the growth of
`torch.cuda.max_memory_allocated`; on CPU the growth of the process's resident-set high-water mark (VmHWM in
/proc/self/status, reset to the current RSS through /proc/self/clear_refs), because tracemalloc does not see torch's
allocations. CPU runs happen in a fresh interpreter by default, so memory the caller's allocator already holds
cannot hide the growth; at tiny sizes the figure is allocator noise of a few pages.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlbridge.atomic import atomic_path, write_text
from vlbridge.bench.flops import (
    PAPER_TEXT_TOKENS,
    PARTS,
    PRESETS,
    FlopsProfile,
    analyze,
    paper_comparison,
)
from vlbridge.bench.measure import run_isolated, status_kib
from vlbridge.config import ModelConfig, apply_overrides, from_dict, load_yaml, to_dict
from vlbridge.devices import resolve_device
from vlbridge.dtypes import resolve_dtype
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.model.vlm import VisionLanguageModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class ModelSource:
    """A model to profile: its display name, config, and checkpoint directory (None: random weights)."""

    name: str
    config: ModelConfig
    checkpoint: str | None = None


@dataclass(frozen=True)
class Measurement:
    """Measured prefill of one image and its prompt."""

    device: str
    dtype: str
    weights: str  # "checkpoint" or "random"
    latency_ms: float  # median
    latencies_ms: list[float]
    peak_bytes: int | None  # what one cold prefill adds on top of the loaded model; None where unmeasurable
    weights_bytes: int
    memory_method: str


@dataclass
class ProfileReport:
    """FLOPs profiles of every model, and measurements of those measured."""

    text_tokens: int
    profiles: list[FlopsProfile]
    measurements: dict[str, Measurement] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "text_tokens": self.text_tokens,
            "profiles": [p.to_dict() for p in self.profiles],
            "measurements": {name: asdict(m) for name, m in self.measurements.items()},
        }


def resolve_model(spec: str, overrides: Sequence[str] = ()) -> ModelSource:
    """A preset name, a YAML model config (a ModelConfig mapping, or a recipe with a `model:` section) or a
    checkpoint directory, with `a.b=c` overrides applied to its config."""
    checkpoint = None
    path = Path(spec)
    if spec in PRESETS:
        data = to_dict(PRESETS[spec])
    elif path.is_dir():
        from vlbridge.model.io import read_config

        data, checkpoint = to_dict(read_config(path)[0]), str(path)
    elif path.is_file() and path.suffix in (".yaml", ".yml"):
        data = load_yaml(path)
        if isinstance(data.get("model"), dict) and "language_model" not in data:
            data = data["model"]
    else:
        raise ConfigError(
            f"cannot profile {spec!r}: pass a checkpoint directory, a YAML model config (.yaml) or a preset "
            f"({', '.join(PRESETS)})"
        )
    name = spec if spec in PRESETS else (path.name if checkpoint else path.stem)
    name += f" [{', '.join(overrides)}]" if overrides else ""
    return ModelSource(name, from_dict(ModelConfig, apply_overrides(data, overrides)), checkpoint)


def build_model(source: ModelSource, device: str, dtype: str, random_weights: bool = False) -> VisionLanguageModel:
    """The model on `device` in `dtype`: the checkpoint's weights, or a seeded random initialisation."""
    torch_dtype = resolve_dtype(dtype)
    if source.checkpoint is not None and not random_weights:
        from vlbridge.model.io import load

        model, _ = load(source.checkpoint, device=device, dtype=torch_dtype)
        if model.config != source.config:
            raise CheckpointError(
                f"--set changed the config of checkpoint {source.checkpoint}, so its weights no longer fit; "
                "drop the overrides or measure random weights (--random-weights)"
            )
        return model
    torch.manual_seed(0)
    with torch.device(device):
        model = VisionLanguageModel(source.config)
    return model.to(dtype=torch_dtype).eval()


def prompt_inputs(model: VisionLanguageModel, text_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One image (random pixels at the processor's crop size) after the first of `text_tokens` random text ids."""
    cfg = model.config
    size = cfg.image_processor.crop_size
    visual = model.tokens_per_image(size, size)
    generator = torch.Generator().manual_seed(seed)
    vocab, image_id = cfg.language_model.vocab_size, cfg.image_token_id
    text = torch.randint(0, vocab, (text_tokens,), generator=generator)
    text = torch.where(text == image_id, (image_id + 1) % vocab, text)
    ids = torch.cat([text[:1], torch.full((visual,), image_id), text[1:]])[None]  # (1, visual + text_tokens)
    channels = cfg.vision.num_channels if cfg.vision is not None else 3
    pixels = torch.randn(1, channels, size, size, generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def _peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int | None, str]:
    """Run `fn` once and return (bytes it added at its peak, how that was measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated growth"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        before = status_kib("VmRSS")
    except OSError as err:
        fn()
        return None, f"unavailable: the VmHWM reset failed ({err})"
    fn()
    return (status_kib("VmHWM") - before) * 1024, "resident-set high-water mark growth (VmHWM after clear_refs)"


def measure_prefill(
    model: VisionLanguageModel, text_tokens: int, repeats: int = 5, warmup: int = 2, weights: str = "random"
) -> Measurement:
    """Time and memory of prefilling one image + `text_tokens` text tokens, in this process."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = model.device
    inputs = {k: v.to(device) for k, v in prompt_inputs(model, text_tokens).items()}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def prefill() -> None:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)

    with torch.inference_mode():
        peak, method = _peak_memory(prefill, device)
        for _ in range(warmup):
            prefill()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            prefill()
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    weights_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return Measurement(str(device), dtype, weights, statistics.median(times), times, peak, weights_bytes, method)


def measure(
    source: ModelSource,
    text_tokens: int,
    device: str = "cpu",
    dtype: str | None = None,
    repeats: int = 5,
    warmup: int = 2,
    random_weights: bool = False,
    isolate: bool | None = None,
) -> Measurement:
    """Build `source` and measure its prefill; `isolate` (default: on CPU) runs it in a fresh Python process."""
    device = str(resolve_device(device))
    dtype = dtype or ("float16" if device.startswith("cuda") else "float32")
    isolate = device == "cpu" if isolate is None else isolate
    spec = {
        "name": source.name,
        "config": to_dict(source.config),
        "checkpoint": source.checkpoint,
        "text_tokens": text_tokens,
        "device": device,
        "dtype": dtype,
        "repeats": repeats,
        "warmup": warmup,
        "random_weights": random_weights,
    }
    if not isolate:
        return Measurement(**measure_spec(spec))
    result = run_isolated({source.name: ("vlbridge.bench.profiler:measure_spec", spec)})[source.name]
    return Measurement(**result)


def measure_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """measure() with its arguments and result as plain data (shared by the in-process and fresh-process paths)."""
    source = ModelSource(spec["name"], from_dict(ModelConfig, spec["config"]), spec["checkpoint"])
    random_weights = spec["random_weights"] or source.checkpoint is None
    model = build_model(source, spec["device"], spec["dtype"], random_weights)
    weights = "random" if random_weights else "checkpoint"
    return asdict(measure_prefill(model, spec["text_tokens"], spec["repeats"], spec["warmup"], weights))


def profile(
    specs: Sequence[str],
    text_tokens: int = PAPER_TEXT_TOKENS,
    overrides: Sequence[str] = (),
    kv_dtype: str = "float16",
    measure_on: str | None = None,
    **measure_options: Any,
) -> ProfileReport:
    """FLOPs profiles of each model in `specs` and, when `measure_on` names a device, measurements there (a device
    this machine lacks is refused before any profile is counted)."""
    if measure_on is not None:
        measure_on = str(resolve_device(measure_on))
    sources = [resolve_model(spec, overrides) for spec in specs]
    names = [s.name for s in sources]
    sources = [replace(s, name=f"{s.name} #{i + 1}") if names.count(s.name) > 1 else s for i, s in enumerate(sources)]
    report = ProfileReport(text_tokens, [analyze(s.config, text_tokens, s.name, kv_dtype) for s in sources])
    if measure_on is not None:
        for source in sources:
            report.measurements[source.name] = measure(source, text_tokens, measure_on, **measure_options)
    return report


def _scale(values: Sequence[float]) -> tuple[float, str]:
    """A FLOPs unit that keeps the largest of `values` readable."""
    top = max(values, default=0)
    return next(((f, u) for f, u in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")) if top >= f), (1.0, "FLOPs"))


def format_report(report: ProfileReport) -> str:
    """The report as markdown: FLOPs by part in both conventions, KV cache, the paper comparison, measurements."""
    profs = report.profiles
    lines = [f"# Efficiency per image ({report.text_tokens} text tokens per prompt; FLOPs = 2 x multiply-accumulates)"]
    titles = {
        "paper": "paper convention: weight products only, every ViT layer, logits at every position",
        "executed": "executed: what vlbridge runs (attention included, ViT up to its feature layer, last logits)",
    }
    for convention, title in titles.items():
        factor, unit = _scale([p.total(convention) for p in profs])
        lines += ["", f"## FLOPs in {unit}, {title}", ""]
        lines += [f"| model | connector | visual tokens | {' | '.join(PARTS)} | total |", "|---|---|" + "---:|" * 6]
        for p in profs:
            cells = [f"{p.parts[part].get(convention) / factor:.3f}" for part in PARTS]
            lines.append(
                f"| {p.name} | {p.connector} | {p.visual_tokens} | {' | '.join(cells)} | "
                f"{p.total(convention) / factor:.3f} |"
            )
    state = "KV: tokens x layers x 2 x kv heads x head dim x bytes; media: tokens x width x bytes"
    lines += ["", f"## Decode state per image ({state})", ""]
    header = "| model | dtype | LM KV per image (MiB) | pre-fusion KV per image (MiB) | cross-attention media (MiB) |"
    lines += [header, "|---|---|---:|---:|---:|"]
    for p in profs:
        lines.append(
            f"| {p.name} | {p.kv_dtype} | {p.kv_bytes_per_image / 2**20:.3f} | "
            f"{p.prefusion_kv_bytes_per_image / 2**20:.3f} | {p.media_bytes_per_image / 2**20:.3f} |"
        )
    comparison = paper_comparison(profs)
    lines += ["", *comparison] if comparison else []
    if report.measurements:
        lines += ["", "## Measured prefill (time to first token: vision + connector + LM prefill)", ""]
        lines += [
            "| model | device | dtype | weights | latency median (ms) | runs | peak memory added (MiB) | "
            "weights (MiB) | memory method |",
            "|---|---|---|---|---:|---:|---:|---:|---|",
        ]
        for name, m in report.measurements.items():
            peak = "n/a" if m.peak_bytes is None else f"{m.peak_bytes / 2**20:.1f}"
            lines.append(
                f"| {name} | {m.device} | {m.dtype} | {m.weights} | {m.latency_ms:.2f} | "
                f"{len(m.latencies_ms)} | {peak} | {m.weights_bytes / 2**20:.1f} | {m.memory_method} |"
            )
    notes = [f"- {p.name}: {note}" for p in profs for note in p.notes]
    lines += ["", "## Notes", "", *notes] if notes else []
    return "\n".join(lines) + "\n"


def profile_figure(report: ProfileReport) -> Figure:
    """Paper-convention FLOPs by part per model (stacked bars), and measured latency (else the decode state per image),
    each bar labelled with its value. The legend sits under both plots, so it covers no bar, and the value axis leaves
    room past the longest bar for its label; parts no model has (prefusion, outside LLaVA-Mini) are left out."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigError("the profile plot needs matplotlib: pip install 'vlbridge[train]' (or matplotlib)") from err

    profs = report.profiles
    rows = list(range(len(profs)))
    labels = [p.name if len(p.name) <= 40 else p.name[:37] + "..." for p in profs]
    factor, unit = _scale([p.total("paper") for p in profs])
    fig = Figure(figsize=(12, 1.8 + 0.6 * len(profs)), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    left, right = fig.subplots(1, 2, sharey=True)
    start = [0.0] * len(profs)
    for colour, part in enumerate(PARTS):
        widths = [p.parts[part].paper / factor for p in profs]
        if any(widths):
            left.barh(rows, widths, left=start, label=part, color=f"C{colour}")  # a part's colour in every plot
            start = [a + b for a, b in zip(start, widths, strict=True)]
    left.bar_label(left.containers[-1], labels=[f"{total:.3g}" for total in start], padding=3)
    left.set_xlabel(f"{unit} per image (paper convention)")
    left.set_yticks(rows, labels)
    if report.measurements:
        latency = [report.measurements[p.name].latency_ms if p.name in report.measurements else 0.0 for p in profs]
        bars = right.barh(rows, latency)
        right.set_xlabel("prefill latency, median (ms)")
    else:
        bars = right.barh(rows, [p.decode_state_bytes_per_image / 2**20 for p in profs])
        right.set_xlabel("decode state per image (MiB): KV caches + media")
    right.bar_label(bars, fmt="%.3g", padding=3)
    for ax in (left, right):
        ax.margins(x=0.12)  # room past the longest bar for its label (bars start at 0, which stays the left edge)
    left.invert_yaxis()  # first model on top, as in the table (the axes share y)
    fig.legend(loc="outside lower center", ncol=len(left.containers), fontsize="small", frameon=False)
    return fig


def plot(report: ProfileReport, path: str | Path) -> None:
    """Write `profile_figure` as a PNG."""
    fig = profile_figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_report(report: ProfileReport, out_dir: str | Path) -> dict[str, Path]:
    """Write profile.md, profile.json and profile.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {"table": out / "profile.md", "json": out / "profile.json", "plot": out / "profile.png"}
    write_text(paths["table"], format_report(report))
    write_text(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    plot(report, paths["plot"])
    return paths
