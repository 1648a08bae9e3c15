"""Knowledge distillation on the synthetic world: a student of under a quarter of the embedded default's parameters,
trained with the default as its teacher (`objective: distill` in its instruct stage, or from an earlier stage on with
--distill-stages, after the stages before trained once for both arms) and without it (plain `causal_lm`), on the same
data, steps, batches and seed. Reports held-out accuracy per question type of the teacher and both students, their
parameter counts, and prefill and decode latency, timed side by side in interleaved rounds.

    python experiments/distillation.py [--phase train|teacher-check|heldout|eval|latency] [--alpha 0.5]
        [--temperature 2.0] [--instruct-steps N] [--student-layers LM VISION] [--distill-stages align drills instruct]
        [--arms plain distilled]

`train` renders the teacher's synthetic world (configs/default.yaml's, with 8000 scenes: `student_world`) into OUT/data
and trains both arms at once, one thread each, so machine load falls on both alike;
`teacher-check` scores the teacher on the student's instruct batches as the distill objective shows them (its soft
targets are only as good as that score); `heldout` counts the test scenes the teacher trained on; `eval` scores the
three models on the test split; `latency` times them. Without a phase, all run. Writes
experiments/results/distillation.{json,txt,png} (earlier runs': distillation_900_steps.*,
distillation_17pct_1800_steps.*); docs/distillation.md holds the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

if TYPE_CHECKING:
    from vlbridge.data.synthetic import SynthOptions

RECIPE = Path(__file__).with_name("distillation_student.yaml")
RESULTS = Path(__file__).parent / "results"
ARMS = ("plain", "distilled")
PHASES = ["train", "teacher-check", "heldout", "eval", "latency"]


def teacher_world() -> SynthOptions:
    """The synthetic world the embedded default was trained on (configs/default.yaml's data.synth)."""
    from vlbridge.train.recipe import load_recipe

    synth = load_recipe(Path("configs/default.yaml")).data.synth
    assert synth is not None
    return synth


def student_world() -> SynthOptions:
    """The teacher's world with 8000 scenes instead of 40000 (rendering 40000 took over 30 minutes on the shared
    machine) and a test share of 0.1: the same 800 test questions as the teacher's test split (each held-out scene is
    drawn from its own seed, index by index), 7120 training scenes (the teacher's first 7120)."""
    return replace(teacher_world(), n=8000, test_fraction=0.1)


def run(recipe: dict, path: Path, env: dict[str, str], resume: bool = False) -> subprocess.Popen:
    """Start `vlbridge train` on `recipe` (written to `path`; `resume`: continue its run), its output in .log."""
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    command = [sys.executable, "-m", "vlbridge", "train", "--config", str(path), *(["--resume"] if resume else [])]
    print(" ".join(command))
    log = path.with_suffix(".log").open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait(job: subprocess.Popen, name: str, start: float) -> None:
    if job.wait():
        raise SystemExit(f"{name} failed; see its .log")
    print(f"{name}: trained in {(time.time() - start) / 60:.1f} min")


def train(args: argparse.Namespace) -> None:
    """Render the data (once), train the student recipe's stages before the first of --distill-stages once
    (OUT/prefix, both arms share them), then the rest from that model two ways at once, one thread each: as the
    recipe says (OUT/plain) and with `objective: distill` in --distill-stages (OUT/distilled); --arms: only those."""
    data = args.out / "data"
    if not (data / "test.jsonl").is_file():
        from vlbridge.data.synthetic import synthesize

        synthesize(data, student_world())
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data"]["root"] = str(data)
    if args.student_layers:
        recipe["model"]["language_model"]["num_hidden_layers"], recipe["model"]["vision"]["num_hidden_layers"] = (
            args.student_layers
        )
    stages = recipe["stages"]
    for stage in stages:
        if stage["name"] == "instruct":
            stage["steps"] = args.instruct_steps or stage["steps"]
    names = [stage["name"] for stage in stages]
    if not set(args.distill_stages) <= set(names):
        raise SystemExit(f"--distill-stages: the student recipe's stages are {names}")
    first = min(names.index(name) for name in args.distill_stages)
    before, after = stages[:first], stages[first:]
    assert all(stage["objective"] == "causal_lm" for stage in after if stage["name"] in args.distill_stages)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    prefix = args.out / "prefix"
    if not (prefix / "config.json").is_file():
        start = time.time()
        job = run({**recipe, "run_dir": str(prefix), "stages": before}, args.out / "prefix.yaml", env, resume=True)
        wait(job, "prefix", start)
    distill = {"alpha": args.alpha, "temperature": args.temperature, "teacher_dtype": args.teacher_dtype}
    distilled = [
        {**stage, "objective": "distill", "distill": distill} if stage["name"] in args.distill_stages else stage
        for stage in after
    ]
    branches = {"plain": after, "distilled": distilled}
    branch = {key: value for key, value in recipe.items() if key != "model"}  # the prefix's model, as it is
    jobs = {
        arm: (
            run(
                {**branch, "run_dir": str(args.out / arm), "init_from": str(prefix), "stages": branches[arm]},
                args.out / f"{arm}.yaml",
                env,
            ),
            time.time(),
        )
        for arm in args.arms
    }
    for arm, (job, start) in jobs.items():
        wait(job, arm, start)


def models(args: argparse.Namespace) -> dict[str, Path | None]:
    """name -> checkpoint (None: the embedded default): the teacher, both arms, and any --also models."""
    also = dict(item.split("=", 1) for item in args.also)
    return {"teacher": None, **{arm: args.out / arm for arm in ARMS}, **{k: Path(v) for k, v in also.items()}}


def held_out_for_the_teacher(data: Path) -> dict[str, int]:
    """How many of OUT/data's test scenes the teacher trained on (the same content as one of its 38,800 training
    scenes, re-drawn here without rendering): its test split was drawn against those, this one against 7120."""
    from collections import Counter

    from vlbridge.data.synthetic.scenes import Scene
    from vlbridge.data.synthetic.writer import TYPES, train_item

    world = teacher_world()
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in TYPES}
    turns = (world.turns[0], world.turns[1])
    seen = {
        train_item(i, world.seed, counts, turns, world.focus, world.spatial, world.varied_names)[0].signature()
        for i in range(world.split_sizes()["train"])
    }
    rows = [json.loads(line) for line in (data / "scenes.jsonl").read_text().splitlines()]
    test = [Scene.from_dict(row["scene"]).signature() for row in rows if row["split"] == "test"]
    return {"test_scenes": len(test), "seen_by_teacher": sum(signature in seen for signature in test)}


def teacher_check(args: argparse.Namespace, samples: int = 256, batch_size: int = 16) -> dict[str, float]:
    """How well the teacher predicts the student's instruct training targets, as the distill objective shows it them
    (the student's processor and template, the trainer's collation): the share of supervised tokens whose argmax is
    the label, and of samples with every supervised token right. Near the teacher's held-out accuracy, its soft targets
    carry the answers; far below it, the objective feeds it wrong inputs."""
    from vlbridge.data.collate import SupervisedDataset, collate, pad_id
    from vlbridge.data.llava_json import load_llava
    from vlbridge.model.io import load

    recipe = yaml.safe_load(RECIPE.read_text())
    instruct = next(stage for stage in recipe["stages"] if stage["name"] == "instruct")
    teacher, processor = load(None)
    data = args.out / "data"
    records = load_llava(data / instruct["data"], data).items[:samples]
    dataset = SupervisedDataset(records, data, processor, recipe["model"]["template"], instruct["max_length"])
    tokens = right = whole = 0
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            rows = range(start, min(start + batch_size, len(dataset)))
            batch = collate([dataset[i] for i in rows], pad_id(processor))
            logits, targets = teacher.supervised_logits(
                batch["input_ids"], batch["labels"], batch["attention_mask"], batch.get("pixel_values")
            )
            hits = logits.argmax(-1) == targets  # (N,) in row order
            per_row = (batch["labels"][:, 1:] != -100).sum(1).tolist()
            tokens += len(hits)
            right += int(hits.sum())
            whole += sum(bool(row.all()) for row in hits.split(per_row))
    out = {"samples": len(dataset), "token_accuracy": right / tokens, "sample_accuracy": whole / len(dataset)}
    print("teacher on the student's instruct batches:", out)
    return out


def evaluate_all(args: argparse.Namespace) -> dict[str, dict]:
    """Test-split scores of the models named by --models (vlbridge's synthetic task, as `vlbridge eval` runs it)."""
    from vlbridge.eval.runner import evaluate
    from vlbridge.eval.tasks.synthetic import SyntheticTask
    from vlbridge.model.io import load

    scores = {}
    for name, path in models(args).items():
        if args.models and name not in args.models:
            continue
        model, processor = load(path)
        result = evaluate(
            model, processor, SyntheticTask.from_folder(args.out / "data", limit=args.limit), args.out / "eval" / name
        )
        scores[name] = result.scores["by_type"]
        print(name, f"{scores[name]['overall']['accuracy']:.3f}")
    return scores


def latency(args: argparse.Namespace) -> dict[str, dict]:
    """Prefill ms and decode ms/token of every model on the sample image and a test question, greedy, EOS off;
    interleaved rounds (one of each model per round), medians; with parameter counts. Then the decode again with the
    native call that runs every decoder layer skipped (`fixed_ms_per_token`: what a step costs besides its layers,
    the embedding, final norm, head, sampling and Python, which a smaller student pays as the teacher does)."""
    from vlbridge.lm import native
    from vlbridge.model.io import default_model_dir, load
    from vlbridge.vision.processor import load_image

    loaded = {name: load(path) for name, path in models(args).items()}
    image = load_image(default_model_dir() / "sample.png")
    question = json.loads((args.out / "data" / "test.jsonl").read_text().splitlines()[0])["question"]
    batches = {}
    for name, (_, processor) in loaded.items():
        prompt = processor.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}])
        batches[name] = dict(processor(text=prompt, images=[image], return_tensors="pt"))

    def timed(name: str, n: int) -> float:
        start = time.perf_counter()
        loaded[name][0].generate(**batches[name], max_new_tokens=n, do_sample=False, eos_token_id=())
        return time.perf_counter() - start

    def rounds() -> dict[str, tuple[float, float]]:
        """{name: (prefill ms, decode ms/token)}, medians over interleaved rounds."""
        prefill: dict[str, list[float]] = {name: [] for name in loaded}
        decode: dict[str, list[float]] = {name: [] for name in loaded}
        for _ in range(args.repeats):
            for name in loaded:
                prefill[name].append(timed(name, 1))
                decode[name].append((timed(name, args.new_tokens + 1) - prefill[name][-1]) / args.new_tokens)
        return {
            name: (statistics.median(prefill[name]) * 1e3, statistics.median(decode[name]) * 1e3) for name in prefill
        }

    with torch.inference_mode():
        for name in loaded:
            timed(name, 2)  # warm-up
        whole = rounds()
        layers, native.decode_stack = native.decode_stack, lambda *_: None
        try:
            fixed = rounds() if native.available() else None
        finally:
            native.decode_stack = layers
    return {
        name: {
            "params": sum(p.numel() for p in model.parameters()),
            "prompt_tokens": int(batches[name]["input_ids"].shape[1]),
            "prefill_ms": whole[name][0],
            "decode_ms_per_token": whole[name][1],
            "fixed_ms_per_token": None if fixed is None else fixed[name][1],
        }
        for name, (model, _) in loaded.items()
    }


def table(scores: dict[str, dict], timing: dict[str, dict]) -> str:
    """The per-type accuracy table, then parameters and latency against the teacher's."""
    names = list(scores)
    types = list(scores["teacher"])
    lines = ["| type | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for kind in types:
        row = [f"{scores[name][kind]['accuracy']:.3f}" for name in names]
        lines.append(f"| {kind} | {scores['teacher'][kind]['n']} | " + " | ".join(row) + " |")
    teacher = timing["teacher"]
    header = (
        "| model | parameters | prefill ms | decode ms/token | of it fixed | prefill vs teacher | decode vs teacher |"
    )
    lines += ["", header]
    lines.append("|---|---|---|---|---|---|---|")
    for name, t in timing.items():
        fixed = "" if t.get("fixed_ms_per_token") is None else f"{t['fixed_ms_per_token']:.2f}"
        lines.append(
            f"| {name} | {t['params']:,} ({t['params'] / teacher['params']:.1%}) | {t['prefill_ms']:.2f} | "
            f"{t['decode_ms_per_token']:.2f} | {fixed} | {t['prefill_ms'] / teacher['prefill_ms']:.2f}x | "
            f"{t['decode_ms_per_token'] / teacher['decode_ms_per_token']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(scores: dict[str, dict], path: Path, student_share: float) -> None:
    """Accuracy per question type, one bar per model; `student_share`: the students' parameters over the teacher's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(scores["teacher"])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(scores)
    for i, (name, by_type) in enumerate(scores.items()):
        xs = [j + (i - (len(scores) - 1) / 2) * width for j in range(len(types))]
        ax.bar(xs, [by_type[t]["accuracy"] for t in types], width, label=name)
    ax.set_xticks(range(len(types)), types, rotation=25, ha="right")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Synthetic test questions: the embedded default (teacher) and a {student_share:.1%}-size student")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", action="append", choices=PHASES, help="default: all, in this order")
    parser.add_argument("--out", type=Path, default=Path("runs/distill"))
    parser.add_argument("--alpha", type=float, default=0.5, help="the KL term's weight")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--teacher-dtype", default="fp32", choices=["fp32", "bf16", "int8"])
    parser.add_argument(
        "--instruct-steps", type=int, default=None, help="the instruct stage's steps (default: the recipe's 900)"
    )
    parser.add_argument(
        "--student-layers", type=int, nargs=2, metavar=("LM", "VISION"), help="the student's depths (default: 2 2)"
    )
    parser.add_argument(
        "--distill-stages",
        nargs="+",
        default=["instruct"],
        help="the distilled arm's distill stages (default: instruct)",
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms `train` trains")
    parser.add_argument(
        "--also", action="append", default=[], metavar="NAME=PATH", help="another student `eval` and `latency` take"
    )
    parser.add_argument("--models", nargs="+", help="the models `eval` scores (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="`eval` scores the first N test questions only")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per latency round")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved latency rounds")
    args = parser.parse_args()
    phases = args.phase or PHASES
    args.out.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    settings = {"alpha": args.alpha, "temperature": args.temperature, "teacher_dtype": args.teacher_dtype}
    settings["student_layers"] = args.student_layers or [2, 2]
    settings["distill_stages"] = args.distill_stages
    new: dict = {"settings": {**settings, "instruct_steps": args.instruct_steps}}
    if "train" in phases:
        train(args)
    if "teacher-check" in phases:
        new["teacher_check"] = teacher_check(args)
    if "heldout" in phases:
        new["held_out"] = held_out_for_the_teacher(args.out / "data")
        print(new["held_out"])
    if "eval" in phases:
        new["accuracy"] = evaluate_all(args)
    if "latency" in phases:
        new["latency"] = latency(args)
        new["threads"] = torch.get_num_threads()
    saved = RESULTS / "distillation.json"  # read now: phases may run in several processes at once
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    merged = {**results.get("accuracy", {}), **new.get("accuracy", {})}
    new["accuracy"] = {name: merged[name] for name in sorted(merged, key=lambda name: name != "teacher")}
    results.update(new)
    saved.write_text(json.dumps(results, indent=2) + "\n")
    if "latency" in results and {"teacher", *ARMS} <= results["accuracy"].keys():
        text = table(results["accuracy"], results["latency"])
        (RESULTS / "distillation.txt").write_text(text)
        timing = results["latency"]
        plot(results["accuracy"], RESULTS / "distillation.png", timing["plain"]["params"] / timing["teacher"]["params"])
        print(text)


if __name__ == "__main__":
    main()
