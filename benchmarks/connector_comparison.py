"""The connector comparison (issue 5): every connector trained on the same parts, data and budget, then measured.

Every variant starts from one trained model (`--parts`, e.g. the run of configs/default.yaml): its vision encoder
and language model are kept, a fresh connector of the variant's kind is put between them (`init_from` + a new
`model.connector`, see train/pipeline.py), and configs/connectors/<name>.yaml trains it with the same stages and
steps. Each variant is then scored on the synthetic world's held-out questions per type and profiled: visual tokens
per image, prefill FLOPs (analytical, vlbridge/bench/flops.py), measured prefill latency and the decode state one
image holds (LM and pre-fusion KV caches, cross-attention media).

    python -m benchmarks.connector_comparison --parts runs/default --data runs/default/data \
        [--only mlp pool-k2 ...] [--set stages.1.steps=100] [--limit 400]

Writes results.md (the table), results.json and accuracy.png / tradeoff.png to --out (benchmarks/results/
connectors_default). Variants train in --runs (runs/connectors); one already finished there is not trained again,
so an interrupted comparison resumes. `--quick` renders a tiny synthetic dataset, trains a tiny model on it as the
parts, and compares mlp with mini-c1-p1 after one step per stage, all in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

import vlbridge
from benchmarks._suite import benchmark_parser, out_dir, run_header
from vlbridge.atomic import write_text
from vlbridge.bench.flops import analyze
from vlbridge.bench.profiler import measure_prefill
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.eval.runner import evaluate
from vlbridge.eval.tasks.synthetic import SyntheticTask
from vlbridge.train import load_recipe, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "connectors"
TEXT_TOKENS = 16  # a synthetic-world question is about this long
LABEL_SHIFTS = (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6)  # where a point's name may go, in lines above it

MINI = "model.connector.options"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mlp": ("mlp", []),
    "qformer": ("qformer", []),
    "perceiver": ("perceiver", []),
    "gated_xattn": ("gated_xattn", []),
    "pool-k2": ("pool", ["model.connector.options.kernel=2"]),
    "pool-k3": ("pool", ["model.connector.options.kernel=3"]),
    "tome-0.25": ("tome", []),
    "patch_merger": ("patch_merger", []),
    **{f"mini-c1-p{n}": ("mini", [f"{MINI}.grid=1", f"{MINI}.prefusion_layers={n}"]) for n in range(5)},
    "mini-c2-p0": ("mini", [f"{MINI}.grid=2", f"{MINI}.prefusion_layers=0"]),
    "mini-c3-p0": ("mini", [f"{MINI}.grid=3", f"{MINI}.prefusion_layers=0"]),
    "mini-c3-p2": ("mini", [f"{MINI}.grid=3", f"{MINI}.prefusion_layers=2"]),
}

QUICK_VARIANTS = ["mlp", "mini-c1-p1"]  # every visual token against one pre-fused token
QUICK_SCENES, QUICK_QUESTIONS = 24, 4
QUICK_SET = [  # a 64-wide 2-layer LM and a 48-wide 1-layer ViT; one step of batch 2 per stage
    "model.language_model.hidden_size=64",
    "model.language_model.intermediate_size=128",
    "model.language_model.num_hidden_layers=2",
    "model.language_model.num_attention_heads=2",
    "model.language_model.num_key_value_heads=1",
    "model.vision.hidden_size=48",
    "model.vision.intermediate_size=96",
    "model.vision.num_hidden_layers=1",
    "model.vision.num_attention_heads=1",
    *(f"stages.{i}.{key}" for i in (0, 1) for key in ("steps=1", "batch_size=2", "save_every=0")),
]


def quick_setup(args: argparse.Namespace, work: Path) -> None:
    """--quick: a tiny synthetic dataset and a tiny model trained on it (the mlp recipe under QUICK_SET) as the
    parts, every variant trained under QUICK_SET too, all in `work`, so nothing of an earlier run is reused."""
    args.data = work / "data"
    synthesize(args.data, SynthOptions(n=QUICK_SCENES, seed=0, val_fraction=0.25))
    args.set = [*QUICK_SET, *args.set]
    parts = load_recipe(CONFIGS / "mlp.yaml", [f"data.root={args.data}", *args.set], run_dir=str(work / "parts"))
    args.parts = train(parts)
    args.runs = work / "runs"


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train, score and profile one variant; the result is cached in RUNS/NAME/result.json."""
    config, overrides = VARIANTS[name]
    run_dir = args.runs / name
    cached = run_dir / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    recipe = load_recipe(
        CONFIGS / f"{config}.yaml",
        [f"init_from={args.parts}", f"data.root={args.data}", *overrides, *args.set],
        run_dir=str(run_dir / "train"),
    )
    trained = train(recipe, resume=(run_dir / "train").is_dir())
    model, processor = vlbridge.load(trained)
    task = SyntheticTask.from_folder(args.data, split=args.split, limit=args.limit)
    scores = evaluate(model, processor, task, run_dir / "eval", batch_size=32).scores
    assert scores is not None, "the synthetic task always has references"
    flops = analyze(model.config, text_tokens=TEXT_TOKENS, name=name, kv_dtype="float32")
    timing = measure_prefill(model, TEXT_TOKENS, repeats=args.repeats, weights="checkpoint")
    result = {
        "name": name,
        "connector": model.config.connector.name,
        "options": model.config.connector.options,
        "accuracy": {k: row["accuracy"] for k, row in scores["by_type"].items()},
        "baseline": {k: row.get("majority_baseline") for k, row in scores["by_type"].items()},
        "visual_tokens": flops.visual_tokens,
        "prefill_gflops": flops.total("executed") / 1e9,
        "latency_ms": timing.latency_ms,
        "decode_state_bytes_per_image": flops.decode_state_bytes_per_image,
    }
    write_text(cached, json.dumps(result, indent=2))
    return result


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: accuracy per type beside the costs per image."""
    types = list(results[0]["accuracy"])
    head = ["variant", "visual tokens", "prefill GFLOPs", "prefill ms", "KV + media KiB/image", *types]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    baseline = ["majority baseline", "", "", "", "", *(f"{results[0]['baseline'][t] or 0:.3f}" for t in types)]
    lines.append("| " + " | ".join(baseline) + " |")
    for r in results:
        costs = [str(r["visual_tokens"]), f"{r['prefill_gflops']:.3f}", f"{r['latency_ms']:.1f}"]
        costs.append(f"{r['decode_state_bytes_per_image'] / 1024:.0f}")
        lines.append("| " + " | ".join([r["name"], *costs, *(f"{r['accuracy'][t]:.3f}" for t in types)]) + " |")
    return "\n".join(lines) + "\n"


def accuracy_figure(results: list[dict[str, Any]]) -> Figure:
    """Accuracy per question type per variant: a group of bars per variant, the legend under the plot."""
    types = [t for t in results[0]["accuracy"] if t != "overall"]
    fig = Figure(figsize=(max(8, len(results) * 0.9), 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(types)
    for i, kind in enumerate(types):
        xs = [j + i * width for j in range(len(results))]
        ax.bar(xs, [r["accuracy"][kind] for r in results], width, label=kind)
    centres = [j + (len(types) - 1) * width / 2 for j in range(len(results))]
    # rotated names end under their group (anchored at their right end), not half a name to the right of it
    ax.set_xticks(centres, [r["name"] for r in results], rotation=40, ha="right", rotation_mode="anchor")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    fig.legend(loc="outside lower center", ncol=len(types), fontsize="small", frameon=False)
    return fig


def _overlaps(a: Bbox, b: Bbox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def label_points(ax: Axes, points: list[tuple[float, float]], names: list[str]) -> None:
    """Name each point beside it, moving a name up or down (a grey line back to its point) or to its left until it
    covers no name placed before it and no other point, and stays inside the axes (where no place is free, the one
    that covers least); the axes' layout must be final."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marker = 4 * ax.figure.dpi / 72  # half a default scatter marker, in pixels
    centres = [ax.transData.transform(point) for point in points]
    dots = [Bbox.from_extents(x - marker, y - marker, x + marker, y + marker) for x, y in centres]
    placed: list[Bbox] = []
    for i in sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0])):  # top first
        others = placed + [dot for j, dot in enumerate(dots) if j != i]
        best = (len(others) + 2, 0, 1)  # (cost, shift, side): the first place of least cost wins
        for shift in LABEL_SHIFTS:
            for side in (1, -1):
                text = _label(ax, points[i], names[i], shift, side)
                box = _words(text, renderer)
                text.remove()
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                cost = sum(_overlaps(box, other) for other in others) + (0 if inside else len(others) + 1)
                best = min(best, (cost, shift, side), key=lambda candidate: candidate[0])
            if best[0] == 0:
                break
        placed.append(_words(_label(ax, points[i], names[i], best[1], best[2]), renderer))


def _words(label: Annotation, renderer: Any) -> Bbox:
    """Where a label's words are drawn, without the line back to its point (which may cross other points)."""
    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def _label(ax: Axes, point: tuple[float, float], name: str, shift: int, side: int) -> Annotation:
    """`name` beside `point`: `side` 1 right of it, -1 left; `shift` lines up (negative: down), joined by a line."""
    return ax.annotate(
        name,
        point,
        xytext=(6 * side, 9 * shift),
        textcoords="offset points",
        ha="left" if side > 0 else "right",
        va="center",
        fontsize=7,
        arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5} if shift else None,
    )


def tradeoff_figure(results: list[dict[str, Any]]) -> Figure:
    """Overall accuracy against visual tokens and against prefill GFLOPs per image, each point named, with the
    majority-answer baseline as a labelled line."""
    fig = Figure(figsize=(12, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    accuracy = [r["accuracy"]["overall"] for r in results]
    baseline = results[0]["baseline"]["overall"] or 0
    tokens: list[int] = []  # tick labels for the token counts, but none closer than 1.5x to the previous one
    for count in sorted({r["visual_tokens"] for r in results}):
        if not tokens or count >= 1.5 * tokens[-1]:
            tokens.append(count)
    for ax, key, label in (
        (axes[0], "visual_tokens", "visual tokens per image"),
        (axes[1], "prefill_gflops", "prefill GFLOPs per image"),
    ):
        ax.scatter([r[key] for r in results], accuracy, c=[f"C{i}" for i in range(len(results))], zorder=3)
        line = ax.axhline(baseline, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.margins(x=0.2, y=0.12)  # room at the edges for the names
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].set_xticks(tokens, [str(t) for t in tokens])
    axes[0].minorticks_off()
    axes[0].set_ylabel("overall held-out accuracy")
    line.set_label(f"majority-answer baseline ({baseline:.3f})")
    fig.legend(handles=[line], loc="outside lower center", frameon=False)
    fig.draw_without_rendering()  # the constrained layout settles, then freezes, so the names are placed once
    fig.set_layout_engine("none")
    for ax, key in ((axes[0], "visual_tokens"), (axes[1], "prefill_gflops")):
        label_points(ax, [(r[key], r["accuracy"]["overall"]) for r in results], [r["name"] for r in results])
    return fig


def plot(results: list[dict[str, Any]], out: Path) -> None:
    """accuracy.png (`accuracy_figure`) and tradeoff.png (`tradeoff_figure`) in `out`."""
    accuracy_figure(results).savefig(out / "accuracy.png")
    tradeoff_figure(results).savefig(out / "tradeoff.png")


def write_results(results: list[dict[str, Any]], out: Path) -> None:
    """results.json, results.md (the run's provenance and the table) and the two figures in `out`; the table printed."""
    write_text(out / "results.json", json.dumps(results, indent=2))
    write_text(out / "results.md", f"{run_header('- ')}\n{table(results)}")
    plot(results, out)
    print(table(results))
    print(f"results: {out / 'results.md'}")


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--parts", help="trained model whose vision encoder and LM every variant shares")
    parser.add_argument("--data", help="synthetic dataset folder (vlbridge data synth)")
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path("runs/connectors"),
        help="folder the variants train in (--quick: a temporary one)",
    )
    parser.add_argument(
        "--only", nargs="*", choices=list(VARIANTS), metavar="VARIANT", help="default: all (--quick: 2)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides applied to every variant")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out questions (--quick: 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed prefills per variant, median (5; --quick: 1)")
    args = parser.parse_args()
    if args.quick and (args.parts or args.data):
        parser.error("--quick makes its own parts and data")
    if not args.quick and not (args.parts and args.data):
        parser.error("--parts and --data are required (or --quick)")
    out = out_dir(args, "connectors_default")
    args.only = args.only or (QUICK_VARIANTS if args.quick else list(VARIANTS))
    args.limit = args.limit or (QUICK_QUESTIONS if args.quick else None)
    args.repeats = args.repeats or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory() if args.quick else contextlib.nullcontext() as work:
        if work is not None:
            quick_setup(args, Path(work))
        results = [run_variant(name, args) for name in args.only]
    write_results(results, out)


if __name__ == "__main__":
    main()
