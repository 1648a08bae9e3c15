"""High resolution (issue 36): single view vs AnyRes vs LLaVA-Mini HD, trained on the high-resolution world alike.

Every variant starts from the embedded default (its vision encoder, trained on 96 px scenes, and its language model)
and trains a fresh connector with configs/connectors/<name>.yaml (align, then instruct; the encoder frozen) on the
same high-resolution world (`vlbridge data synth --world highres --image-size 384`): small shapes and a small word
that a single 96 px view shows at half the size the encoder learnt. Variants: one 96 px view through the mlp connector;
AnyRes (LLaVA-NeXT: a 192 px grid of 2x2 tiles + the base view) through mlp and through 2x2 pooling; LLaVA-Mini (one
view, C = 1) and LLaVA-Mini HD (2x2 crops + the whole image, C = 1 and C = 2). Each is scored on the held-out questions
per type (text and shape need the detail, count and where do not), and measured on one 384 px test image with its
question: visual tokens (the processor's count), prefill FLOPs (FlopCounterMode over the forward: every matmul and
attention product), the decode state one image holds (LM and pre-fusion KV caches, fp32) and prefill latency
(model.generate with one new token), timed in alternating rounds so every variant sees the same machine load.

    python -m benchmarks.highres_comparison [--n 4000] [--set stages.1.steps=300 ...] [--only single-mlp mini-hd-c2]

Writes results.md, results.json, accuracy.png and tradeoff.png (benchmarks/connector_comparison.py's figures) to
--out (benchmarks/results/highres). Variants train in --runs (runs/highres); one finished there is not trained again.
`--quick` renders 16 scenes and trains three variants (single-mlp, anyres-pool, mini-hd-c1) one step per stage, in a
temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import vlbridge
from benchmarks._suite import benchmark_parser, out_dir
from benchmarks.connector_comparison import CONFIGS, MINI, write_results
from vlbridge.atomic import write_text
from vlbridge.bench.flops import count_flops
from vlbridge.bench.token_budget import kv_bytes
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.eval.runner import evaluate
from vlbridge.eval.tasks.synthetic import SyntheticTask
from vlbridge.train import load_recipe, train

DEFAULT = Path(vlbridge.__file__).parent / "assets" / "default"
ANYRES = "model.image_processor.image_grid_pinpoints=[[192, 192]]"  # 2x2 tiles of the 96 px encoder + the base view
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "single-mlp": ("mlp", []),
    "anyres-mlp": ("mlp", [ANYRES]),
    "anyres-pool": ("pool", [ANYRES, "model.connector.options.kernel=2"]),
    "mini-c1": ("mini", [f"{MINI}.grid=1"]),
    "mini-hd-c1": ("mini", [f"{MINI}.grid=1", f"{MINI}.hd_grid=2"]),
    "mini-hd-c2": ("mini", [f"{MINI}.grid=2", f"{MINI}.hd_grid=2"]),
}
QUICK_VARIANTS = ["single-mlp", "anyres-pool", "mini-hd-c1"]  # one view, AnyRes, Mini-HD
QUICK_SET = [*(f"stages.{i}.{key}" for i in (0, 1) for key in ("steps=1", "batch_size=2", "save_every=0"))]


def build_data(args: argparse.Namespace, data: Path) -> None:
    """The high-resolution world in `data`, unless a finished one is there already."""
    if (data / "stats.json").is_file():
        return
    options = SynthOptions(n=args.n, seed=0, image_size=384, world="highres", test_fraction=0.1, val_fraction=0.05)
    synthesize(data, options)


def train_variant(name: str, args: argparse.Namespace) -> Path:
    """The trained checkpoint of variant `name` (trained now unless RUNS/NAME holds a finished run)."""
    config, overrides = VARIANTS[name]
    run_dir = args.runs / name / "train"
    recipe = load_recipe(
        CONFIGS / f"{config}.yaml",
        [f"init_from={DEFAULT}", f"data.root={args.data}", "data.synth=null", *overrides, *args.set],
        run_dir=str(run_dir),
    )
    return train(recipe, resume=run_dir.is_dir())


def question_inputs(processor: Any, data: Path) -> dict[str, torch.Tensor]:
    """The model's inputs for the first held-out question with its 384 px image, as the eval prompts it."""
    first = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\n" + first["question"]}])
    return processor(text=text, images=[data / first["image"]])


def decode_state_bytes(model: Any, visual_tokens: int) -> int:
    """fp32 bytes one image keeps while decoding: its LM KV cache, plus the pre-fusion KV cache of every visual token
    pre-fusion read (mini: the view tokens, and with HD the compressed ones too)."""
    lm = model.config.language_model
    total = kv_bytes(visual_tokens, lm, 4)
    options = model.config.connector.options
    layers = int(options.get("prefusion_layers", 4)) if model.config.connector.name == "mini" else 0
    if layers:
        side = model.config.image_processor.crop_size
        per_view = model.vision_encoder.num_patches(side, side)
        crops = int(options.get("hd_grid", 1))
        read = per_view + (crops * crops * per_view + visual_tokens if crops > 1 else 0)
        total += kv_bytes(read, lm, 4, layers)
    return total


def score(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and score one variant and count its costs on one image; cached in RUNS/NAME/result.json."""
    cached = args.runs / name / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    checkpoint = train_variant(name, args)
    model, processor = vlbridge.load(checkpoint)
    task = SyntheticTask.from_folder(args.data, split="test", limit=args.limit)
    scores = evaluate(model, processor, task, args.runs / name / "eval", batch_size=32).scores
    assert scores is not None, "the synthetic task always has references"
    inputs = question_inputs(processor, args.data)
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():  # not inference_mode: FlopCounterMode's module tracker hooks autograd
        weight, activation = count_flops(lambda: model(**inputs))
    result = {
        "name": name,
        "checkpoint": str(checkpoint),
        "connector": model.config.connector.name,
        "options": model.config.connector.options,
        "accuracy": {k: row["accuracy"] for k, row in scores["by_type"].items()},
        "baseline": {k: row.get("majority_baseline") for k, row in scores["by_type"].items()},
        "visual_tokens": visual,
        "prefill_gflops": (weight + activation) / 1e9,
        "decode_state_bytes_per_image": decode_state_bytes(model, visual),
    }
    write_text(cached, json.dumps(result, indent=2))
    return result


def time_prefills(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, float]:
    """Median prefill ms per variant, the variants timed in turn in each of `args.repeats` rounds after a warm-up."""
    loaded = {}
    for result in results:
        model, processor = vlbridge.load(result["checkpoint"])
        loaded[result["name"]] = (model, question_inputs(processor, args.data))
    times: dict[str, list[float]] = {name: [] for name in loaded}
    with torch.inference_mode():
        for round_ in range(args.repeats + 1):
            for name, (model, inputs) in loaded.items():
                start = time.perf_counter()
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
                if round_:  # round 0 warms up
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/highres"), help="folder the variants train in")
    parser.add_argument("--n", type=int, default=4000, help="scenes in the high-resolution world (--quick: 16)")
    parser.add_argument(
        "--only", nargs="*", choices=list(VARIANTS), metavar="VARIANT", help="default: all (--quick: 3)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides applied to every variant")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out questions (--quick: 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed prefill rounds (20; --quick: 1)")
    args = parser.parse_args()
    out = out_dir(args, "highres")
    names = args.only or (QUICK_VARIANTS if args.quick else list(VARIANTS))
    args.limit = args.limit or (4 if args.quick else None)
    args.repeats = args.repeats or (1 if args.quick else 20)
    with tempfile.TemporaryDirectory() if args.quick else contextlib.nullcontext() as work:
        if work is not None:
            args.runs, args.n, args.set = Path(work) / "runs", 16, [*QUICK_SET, *args.set]
        args.data = args.runs / "data"
        build_data(args, args.data)
        results = [score(name, args) for name in names]
        latency = time_prefills(results, args)
    for result in results:
        result["latency_ms"] = latency[result["name"]]
    write_results(results, out)


if __name__ == "__main__":
    main()
