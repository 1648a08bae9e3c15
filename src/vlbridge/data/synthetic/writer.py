"""Write a synthetic dataset folder: images, stage-1 captions, stage-2 instructions, held-out questions, stats.

The folder is what vlbridge's training and evaluation read (SPEC sections 4 and 7):

- `images/<split>_<index>.png`, rendered scenes;
- `captions.json`, stage 1 (feature alignment): LLaVA conversation JSON, one caption per training image, its
  objects in a random order (`tasks.caption`);
- `instruct.json`, stage 2: multi-turn LLaVA conversations (2-5 question types per image, `<image>` in the first
  human turn only) on the same training images, and each image's caption conversation again (id `<name>_caption`),
  as LLaVA-1.5's instruction mix keeps caption data: the captions go on teaching the object lookups the questions
  need while the model learns to answer them;
- `regions.jsonl`, stage 0 (supervised vision pre-training, `vlbridge.data.regions`): per training image, each
  region's labels (empty / object / text, the object's shape, colour and size, the word);
- `val.jsonl` and `test.jsonl`, held-out questions, one per image, `{"question_id", "image", "question",
  "answer", "type"}` plus `"choices"` for multiple choice;
- `scenes.jsonl`, the scene behind every image, so answers can be re-derived and images re-rendered;
- `stats.json`, per split and question type: counts, the answer distribution, the majority-answer baseline
  (the accuracy of always giving the type's most common answer), the floor a model must clear, and the unbound
  baseline (`baselines.py`: what a model gets that sees the scene's attributes but does not bind them to objects).

Image paths in the JSON files are relative to the dataset folder. Every item draws from its own seed, derived
from (seed, split, index), so a given index renders the same image whatever `n` is (a held-out one can change only
if a new training scene now matches it); held-out scenes must differ from every training scene (and test scenes
from validation ones) in content, i.e. objects, regions and word, not just in seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from vlbridge.data.synthetic.baselines import unbound_score
from vlbridge.data.synthetic.scenes import GRID, Scene, derive_seed, render_scene
from vlbridge.data.synthetic.tasks import (
    ANSWERS,
    CAPTION_PROMPTS,
    IMAGE_TOKEN,
    QA,
    TYPES,
    caption,
    conversation,
    least_used,
    region_relation,
    sample_item,
    stratified_answer,
)
from vlbridge.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
OUTPUT_FILES = (
    "captions.json",
    "instruct.json",
    "regions.jsonl",
    "val.jsonl",
    "test.jsonl",
    "scenes.jsonl",
    "stats.json",
)
DEFAULT_TURNS = (2, 5)  # question turns per training image, drawn uniformly
DRILL_TURNS = 4  # questions per text-only drill conversation
RENDERS_PER_WORKER = 2000  # below this many images per core, starting worker processes costs more than it saves


def _split_sizes(n: int, test_fraction: float, val_fraction: float) -> dict[str, int]:
    """Images per split; raises ConfigError for sizes that leave no training images."""
    if n < 1:
        raise ConfigError(f"n must be a positive number of images, got {n}")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n - n_test - n_val < 1:
        raise ConfigError(f"n={n} leaves no training images after test/val; raise n or lower the fractions")
    return {"train": n - n_test - n_val, "val": n_val, "test": n_test}


def _prepare(out: Path, overwrite: bool) -> None:
    """Create the folder; refuse a non-empty one unless `overwrite`, then clear only files this writer makes."""
    if out.exists() and not out.is_dir():
        raise DataError("the output path is a file; give a folder", out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                "the output folder is not empty; choose a new folder or pass --overwrite (overwrite=True)", out
            )
        for split in SPLITS:
            for old in (out / "images").glob(f"{split}_*.png"):
                old.unlink()
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def train_item(
    index: int,
    seed: int,
    counts: dict[str, Counter[str]],
    turns: tuple[int, int],
    focus: Sequence[str] = (),
    spatial: float = 0.0,
    varied_names: float = 0.0,
) -> tuple[Scene, list[QA], list[dict[str, str]]]:
    """One training image: a dealt first question picks the scene, further turns take the least used answers (types
    in shuffled rounds, so past nine turns a type comes again, never the same question), then one more turn per
    type in `focus`, each put at a random place among them; and its caption conversation. `spatial` is
    `tasks.propose`'s, `varied_names` `tasks.caption`'s. `counts` (type -> answer tally) is updated; scripts that
    need scenes without images (e.g. benchmarks/ideal_vision.py) call it directly."""
    rng = random.Random(derive_seed(seed, "train", index))
    kind = TYPES[index % len(TYPES)]
    answer = stratified_answer(kind, index // len(TYPES), seed, "train")
    scene, first = sample_item(kind, answer, rng, spatial=spatial)
    qas, asked = [first], {first.question}
    counts[kind][first.answer] += 1
    wanted = rng.randint(*turns)
    others = [t for t in TYPES if t != kind]
    for _ in range(-(-wanted // len(TYPES))):
        for extra in rng.sample(others, len(others)):  # a type the scene cannot pose (relation, one object) is skipped
            if len(qas) == wanted:
                break
            qa = least_used(extra, scene, counts[extra], rng, spatial)
            if qa is not None and qa.question not in asked:
                qas.append(qa)
                asked.add(qa.question)
                counts[qa.type][qa.answer] += 1
        others = list(TYPES)
    for extra in focus:
        qa = least_used(extra, scene, counts[extra], rng, spatial)
        if qa is not None and qa.question not in asked:
            qas.insert(rng.randint(0, len(qas)), qa)
            asked.add(qa.question)
            counts[qa.type][qa.answer] += 1
    prompt = rng.choice(CAPTION_PROMPTS)
    described = [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"},
        {"from": "gpt", "value": caption(scene, rng, varied_names)},
    ]
    return scene, qas, described


def drill(index: int, seed: int) -> dict[str, Any]:
    """One text-only conversation of relation questions between regions named by place (`tasks.region_relation`)."""
    rng = random.Random(derive_seed(seed, "drill", index))
    return {
        "id": f"drill_{index:06d}",
        "conversations": conversation((region_relation(rng) for _ in range(DRILL_TURNS)), image=False),
    }


def _answer_stats(items: Iterable[tuple[Scene, QA]]) -> dict[str, Any]:
    """Counts, answer distribution, majority-answer and unbound baselines per question type."""
    by_type: dict[str, Counter[str]] = {t: Counter() for t in TYPES}
    unbound: dict[str, float] = dict.fromkeys(TYPES, 0.0)
    for scene, qa in items:
        by_type[qa.type][qa.answer] += 1
        unbound[qa.type] += unbound_score(scene, qa)
    types = {}
    for kind, counts in by_type.items():
        total = sum(counts.values())
        top_answer, top = max(counts.items(), key=lambda kv: kv[1]) if counts else (None, 0)
        types[kind] = {
            "count": total,
            "majority_answer": top_answer,
            "majority_baseline": top / total if total else 0.0,
            "unbound_baseline": unbound[kind] / total if total else 0.0,
            "answers": {a: counts[a] for a in ANSWERS[kind]},
        }
    posed = [t for t in types.values() if t["count"]]
    mean = sum(t["majority_baseline"] for t in posed) / len(posed) if posed else 0.0
    return {"questions": sum(t["count"] for t in posed), "mean_majority_baseline": mean, "types": types}


def _render(job: tuple[Scene, Path], image_size: int) -> None:
    scene, path = job
    render_scene(scene, image_size).save(path, format="PNG")


def _render_all(renders: list[tuple[Scene, Path]], image_size: int) -> None:
    """Render and save the images on every CPU core: drawing and PNG encoding are two thirds of a dataset's writing
    time, and each image depends on its scene alone (the scenes themselves are drawn in order, as answer counts
    steer them)."""
    workers = min(len(os.sched_getaffinity(0)), max(1, len(renders) // RENDERS_PER_WORKER))
    render = partial(_render, image_size=image_size)
    if workers == 1:
        for job in renders:
            render(job)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in pool.map(render, renders, chunksize=RENDERS_PER_WORKER // 4):
            pass


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _write_held_out(
    out: Path,
    split: str,
    count: int,
    seed: int,
    seen: set[tuple],
    scene_rows: list[dict],
    renders: list[tuple[Scene, Path]],
) -> list[tuple[Scene, QA]]:
    """One question per image for a held-out split, whose scenes must not match any scene in `seen`; the images to
    render go to `renders`."""
    rows, items, signatures = [], [], []
    for index in range(count):
        rng = random.Random(derive_seed(seed, split, index))
        kind = TYPES[index % len(TYPES)]
        answer = stratified_answer(kind, index // len(TYPES), seed, split)
        scene, qa = sample_item(kind, answer, rng, reject=lambda s: s.signature() in seen)
        name = f"{split}_{index:06d}"
        image = f"images/{name}.png"
        renders.append((scene, out / image))
        row = {"question_id": name, "image": image, "question": qa.question, "answer": qa.answer, "type": kind}
        rows.append(row | ({"choices": list(qa.choices)} if qa.choices else {}))
        scene_rows.append({"id": name, "image": image, "split": split, "scene": scene.to_dict()})
        items.append((scene, qa))
        signatures.append(scene.signature())
    seen.update(signatures)  # later held-out splits differ from this one too
    _write_jsonl(out / f"{split}.jsonl", rows)
    return items


def synthesize(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    image_size: int = 96,
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    overwrite: bool = False,
    turns: Sequence[int] = DEFAULT_TURNS,
    focus: Sequence[str] = (),
    spatial: float = 0.0,
    drills: int = 0,
    varied_names: float = 0.0,
) -> dict[str, Any]:
    """Render `n` scenes into `out_dir` (split train/val/test by the fractions) and return the stats written.

    The same arguments give byte-identical files. `image_size` below 48 makes the text illegible and is refused.
    `turns` (lowest, highest) is how many question turns a training image gets: more turns give more supervised
    answers for each image the model encodes. `focus` lists question types each training image gets one more turn
    of (a type twice: two more), for the types that need the most examples; `spatial` is the chance that a training
    relation or multiple-choice question names an object by its region (`tasks.propose`). Held-out questions are
    the same whatever `focus` and `spatial` are. `drills` text-only conversations of relation questions between
    regions named by place (`drill`) go to `drills.json`, for a stage of their own before instruction tuning:
    comparing two regions is a step the language model learns from these in a hundred steps, and in most runs not
    at all from image questions among the other types.
    `varied_names` is the chance a caption names an object without its colour or its shape (`tasks.caption`).
    """
    if image_size < 48:
        raise ConfigError(f"image_size must be >= 48 pixels for the text to stay legible, got {image_size}")
    if len(turns) != 2 or not 1 <= turns[0] <= turns[1]:
        raise ConfigError(f"turns must be (lowest, highest) with 1 <= lowest <= highest, got {tuple(turns)}")
    unknown = sorted(set(focus) - set(TYPES))
    if unknown:
        raise ConfigError(f"focus names unknown question types {unknown}; choose from {', '.join(TYPES)}")
    if not 0 <= spatial <= 1:
        raise ConfigError(f"spatial must be a probability in [0, 1], got {spatial}")
    if drills < 0:
        raise ConfigError(f"drills must be a number of conversations >= 0, got {drills}")
    if not 0 <= varied_names <= 1:
        raise ConfigError(f"varied_names must be a probability in [0, 1], got {varied_names}")
    sizes = _split_sizes(n, test_fraction, val_fraction)
    out = Path(out_dir)
    _prepare(out, overwrite)
    captions, instruct, regions, scene_rows, train_items = [], [], [], [], []
    renders: list[tuple[Scene, Path]] = []
    counts: dict[str, Counter[str]] = {t: Counter() for t in TYPES}
    seen: set[tuple] = set()
    for index in range(sizes["train"]):
        scene, qas, described = train_item(index, seed, counts, tuple(turns), focus, spatial, varied_names)
        name = f"train_{index:06d}"
        image = f"images/{name}.png"
        renders.append((scene, out / image))
        captions.append({"id": name, "image": image, "conversations": described})
        instruct.append({"id": name, "image": image, "conversations": conversation(qas)})
        instruct.append({"id": f"{name}_caption", "image": image, "conversations": described})
        regions.append({"image": image, "grid": GRID, "labels": scene.region_labels()})
        scene_rows.append({"id": name, "image": image, "split": "train", "scene": scene.to_dict()})
        train_items += [(scene, qa) for qa in qas]
        seen.add(scene.signature())
    stats: dict[str, Any] = {"seed": seed, "image_size": image_size, "images": sizes}
    stats["splits"] = {"train": _answer_stats(train_items)}
    for split in ("val", "test"):
        items = _write_held_out(out, split, sizes[split], seed, seen, scene_rows, renders)
        stats["splits"][split] = _answer_stats(items)
    _render_all(renders, image_size)
    _write_json(out / "captions.json", captions)
    _write_json(out / "instruct.json", instruct)
    if drills:
        _write_json(out / "drills.json", [drill(index, seed) for index in range(drills)])
    _write_jsonl(out / "regions.jsonl", regions)
    _write_jsonl(out / "scenes.jsonl", scene_rows)
    _write_json(out / "stats.json", stats)
    return stats
