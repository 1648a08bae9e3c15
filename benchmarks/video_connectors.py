"""Video connectors trained on the synthetic video world with one budget: LLaVA-Mini vs pooled frames vs Perceiver.

Each variant takes the embedded default model's vision encoder (frozen) and language model, gets a fresh connector,
and trains the connector and the LM for the same steps on the same batches of `instruct.json` questions from
`vlbridge data synth-video` clips (8 s at 2 fps, sampled at 1 fps: 8 frames a video). Variants:

- `mini`: LLaVA-Mini, 1 token per frame, 2 pre-fusion layers (per frame, averaged), projector from the default's mlp;
- `pool`: LLaVA-NeXT-Video style, each frame's 3 x 3 patch grid average-pooled 2 x 2 (4 tokens) then the mlp
  projector (from the default's), the frames one after another;
- `perceiver`: Flamingo's resampler, 8 latents over all frames with time embeddings (fresh).

Reported per variant: held-out exact-match accuracy per question type beside the majority baseline, visual tokens
per video, prefill FLOPs (executed, counted by torch's FlopCounterMode on one video prompt) and prefill latency
(median of interleaved runs). A markdown table and a PNG go to benchmarks/results/video_connectors/.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import vlbridge
from benchmarks._suite import benchmark_parser, out_dir, run_header
from vlbridge.atomic import write_text
from vlbridge.bench.flops import count_flops
from vlbridge.config import ConnectorConfig
from vlbridge.data.synthetic.video import VIDEO_TYPES
from vlbridge.data.synthetic.video_writer import VideoSynthOptions, synthesize_videos
from vlbridge.highres.video import read_video
from vlbridge.model.vlm import VisionLanguageModel

VARIANTS: dict[str, dict[str, Any]] = {
    "mini": {"grid": 1, "prefusion_layers": 2},
    "pool": {"kernel": 2},
    "perceiver": {"num_latents": 8, "depth": 2, "max_frames": 8, "num_heads": 4, "head_dim": 48},
}
END = "<|im_end|>"


def build(base: VisionLanguageModel, name: str, processor: Any) -> VisionLanguageModel:
    """The default model with a fresh `name` connector; the default's ViT and LM, and its mlp as the projector where
    the connector has one."""
    config = replace(base.config, connector=ConnectorConfig(name=name, options=VARIANTS[name]))
    torch.manual_seed(0)
    model = VisionLanguageModel(config, tokenizer=processor.tokenizer)
    assert model.vision_encoder is not None and base.vision_encoder is not None and model.connector is not None
    model.vision_encoder.load_state_dict(base.vision_encoder.state_dict())
    model.language_model.load_state_dict(base.language_model.state_dict())
    model.connector.init_from_language_model(model.language_model)
    projector = getattr(model.connector, "projector", None)
    if projector is not None:
        projector.load_state_dict(base.connector.state_dict())
    model.vision_encoder.requires_grad_(False)
    return model


class Batches:
    """Prompt ids, labels and frames for the model, from (video pixels, question, answer) examples."""

    def __init__(self, model: VisionLanguageModel, processor: Any, frames: int) -> None:
        self.model, self.processor = model, processor
        self.visual = model.tokens_per_video(frames, 96, 96)

    def prompt(self, question: str) -> str:
        text = self.processor.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}])
        return self.processor.expand_images(text, [self.visual])

    def training(self, examples: list[tuple[torch.Tensor, str, str]]) -> dict[str, torch.Tensor]:
        prompts = [self.prompt(q) for _, q, _ in examples]
        tok = self.processor.tokenizer
        heads = tok.encode_batch(prompts)
        fulls = tok.encode_batch([p + a + END for p, (_, _, a) in zip(prompts, examples, strict=True)])
        width = max(len(f) for f in fulls)
        ids = torch.full((len(fulls), width), tok.pad_token_id or 0)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row, (head, full) in enumerate(zip(heads, fulls, strict=True)):
            ids[row, : len(full)] = torch.tensor(full)
            labels[row, len(head) : len(full)] = torch.tensor(full[len(head) :])
            mask[row, : len(full)] = 1
        pixels = torch.cat([p for p, _, _ in examples])
        counts = torch.tensor([p.shape[0] for p, _, _ in examples])
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "pixel_values": pixels,
            "video_frames": counts,
        }

    def evaluation(self, examples: list[tuple[torch.Tensor, str, str]]) -> dict[str, torch.Tensor]:
        ids = self.processor.tokenizer.encode_batch([self.prompt(q) for _, q, _ in examples])
        out = self.processor._pad(ids, "left")
        out["pixel_values"] = torch.cat([p for p, _, _ in examples])
        out["video_frames"] = torch.tensor([p.shape[0] for p, _, _ in examples])
        return out


def load_examples(data: Path, processor: Any) -> tuple[list, list, dict[str, Any]]:
    """(train examples, test examples (with type), stats): each video decoded at 1 fps once and preprocessed."""
    pixels: dict[str, torch.Tensor] = {}

    def video(path: str) -> torch.Tensor:
        if path not in pixels:
            pixels[path] = processor.image_processor(read_video(data / path, fps=1.0))  # (F, 3, 96, 96)
        return pixels[path]

    train = []
    for conv in json.loads((data / "instruct.json").read_text()):
        turns = conv["conversations"]
        for k in range(0, len(turns), 2):
            train.append((video(conv["video"]), turns[k]["value"].removeprefix("<video>\n"), turns[k + 1]["value"]))
    tests = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    test = [(video(t["video"]), t["question"], t["answer"], t["type"]) for t in tests]
    return train, test, json.loads((data / "stats.json").read_text())


def train(model: VisionLanguageModel, batches: Batches, train_set: list, steps: int, batch: int, seed: int) -> float:
    """AdamW on the connector (1e-3) and the LM (1e-4); the same shuffled batches for every variant. Last loss."""
    assert model.connector is not None
    optimizer = torch.optim.AdamW(
        [
            {"params": model.connector.parameters(), "lr": 1e-3},
            {"params": model.language_model.parameters(), "lr": 1e-4},
        ]
    )
    rng = random.Random(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="train", unit="step", leave=False):
        loss = model.loss(**batches.training(rng.sample(train_set, batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def evaluate(model: VisionLanguageModel, batches: Batches, test_set: list) -> dict[str, float]:
    """Exact-match accuracy per question type (greedy, 4 new tokens at most)."""
    right = {kind: [] for kind in VIDEO_TYPES}
    for start in range(0, len(test_set), 8):
        chunk = test_set[start : start + 8]
        inputs = batches.evaluation([(p, q, a) for p, q, a, _ in chunk])
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        replies = model.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])
        for (_, _, answer, kind), reply in zip(chunk, replies, strict=True):
            right[kind].append(reply.strip().lower().rstrip(".") == answer)
    return {kind: sum(r) / len(r) if r else float("nan") for kind, r in right.items()}


def costs(models: dict[str, VisionLanguageModel], batches: dict[str, Batches], example: tuple, repeats: int) -> dict:
    """Visual tokens, prefill FLOPs and median prefill latency per variant, timed in interleaved rounds."""
    inputs = {name: batches[name].evaluation([example]) for name in models}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs[name])
                times[name].append(time.perf_counter() - start)
    flops = {name: sum(count_flops(lambda m=model, i=inputs[name]: m(**i))) for name, model in models.items()}
    return {
        name: {"tokens": batches[name].visual, "gflops": flops[name] / 1e9, "ms": 1e3 * statistics.median(times[name])}
        for name in models
    }


def plot(results: dict[str, Any], baselines: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(results)
    for i, (name, row) in enumerate(results.items()):
        xs = [k + i * width for k in range(len(VIDEO_TYPES))]
        left.bar(xs, [row["accuracy"][kind] for kind in VIDEO_TYPES], width, label=f"{name} ({row['tokens']} tok)")
    for k, kind in enumerate(VIDEO_TYPES):
        left.hlines(baselines[kind], k - width / 2, k + 0.8 - width / 2, colors="black", linestyles="dashed")
    left.set_xticks([k + 0.4 - width / 2 for k in range(len(VIDEO_TYPES))], VIDEO_TYPES)
    left.set_ylabel("held-out accuracy (dashed: majority baseline)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    for name, row in results.items():
        right.scatter(row["tokens"], row["ms"], s=60)
        right.annotate(f"{name}\n{row['gflops']:.2f} GFLOPs", (row["tokens"], row["ms"]), fontsize=8)
    right.set_xlabel("visual tokens per video (8 frames)")
    right.set_ylabel("prefill latency (ms)")
    right.margins(0.3)
    fig.suptitle("Video connectors, same training budget (synthetic clips, default ViT + LM)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--clips", type=int, default=400, help="clips written (80%% train, 20%% test)")
    parser.add_argument("--steps", type=int, default=150, help="training steps per variant")
    parser.add_argument("--batch", type=int, default=8, help="questions per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.clips, args.steps, args.batch = 10, 1, 2
    out = out_dir(args, "video_connectors")
    base, processor = vlbridge.load()
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_videos(Path(tmp), VideoSynthOptions(n=args.clips, seed=args.seed))
        train_set, test_set, stats = load_examples(Path(tmp), processor)
    baselines = {kind: stats["types"][kind]["majority_baseline"] for kind in VIDEO_TYPES}
    models = {name: build(base, name, processor) for name in VARIANTS}
    batches = {name: Batches(model, processor, 8) for name, model in models.items()}
    results: dict[str, Any] = {}
    for name, model in models.items():
        start = time.perf_counter()
        loss = train(model, batches[name], train_set, args.steps, args.batch, args.seed)
        results[name] = {"loss": loss, "train_s": time.perf_counter() - start}
        results[name]["accuracy"] = evaluate(model, batches[name], test_set)
        print(name, results[name], flush=True)
    for name, row in costs(models, batches, test_set[0][:3], 3 if args.quick else 15).items():
        results[name].update(row)
    lines = [
        "# Video connectors, same budget",
        "",
        run_header("- "),
        "",
        f"{len(train_set)} training questions from {args.clips - len(test_set)} clips, {len(test_set)} held-out "
        f"questions; {args.steps} steps of {args.batch}; 8 frames a video (1 fps).",
        "",
        "| connector | visual tokens / video | prefill GFLOPs | prefill ms | "
        + " | ".join(VIDEO_TYPES)
        + " | mean | final loss |",
        "|---|---|---|---|" + "---|" * len(VIDEO_TYPES) + "---|---|",
    ]
    for name, row in results.items():
        accs = [row["accuracy"][kind] for kind in VIDEO_TYPES]
        lines.append(
            f"| {name} | {row['tokens']} | {row['gflops']:.3f} | {row['ms']:.1f} | "
            + " | ".join(f"{a:.3f}" for a in accs)
            + f" | {statistics.mean(accs):.3f} | {row['loss']:.3f} |"
        )
    lines.append(
        "| majority baseline | | | | "
        + " | ".join(f"{baselines[k]:.3f}" for k in VIDEO_TYPES)
        + f" | {statistics.mean(baselines.values()):.3f} | |"
    )
    write_text(out / "results.md", "\n".join(lines) + "\n")
    write_text(out / "results.json", json.dumps({"results": results, "baselines": baselines}, indent=1) + "\n")
    plot(results, baselines, out / "video_connectors.png")
    print("\n".join(lines))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
