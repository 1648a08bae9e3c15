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
from vlbridge.data.synthetic.json_files import write_json, write_jsonl
from vlbridge.data.synthetic.options import SynthOptions
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
from vlbridge.errors import DataError

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
DRILL_TURNS = 4  # questions per text-only drill conversation


def output_files(options: SynthOptions) -> tuple[str, ...]:
    """The data files `synthesize` writes with `options` beside images/ (drills.json only when it renders drills)."""
    return (*OUTPUT_FILES, "drills.json") if options.drills else OUTPUT_FILES


RENDERS_PER_WORKER = 2000  # below this many images per core, starting worker processes costs more than it saves


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
    need scenes without images (e.g. experiments/ideal_vision.py) call it directly."""
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
    write_jsonl(out / f"{split}.jsonl", rows)
    return items


def synthesize(out_dir: str | Path, options: SynthOptions, overwrite: bool = False) -> dict[str, Any]:
    """Render `options.n` scenes into `out_dir` (split train/val/test by the fractions) and return the stats written.

    The same options give byte-identical files (`SynthOptions` says what each one does). Options the writer cannot
    use raise ConfigError before anything is written; a non-empty `out_dir` raises DataError unless `overwrite`.
    """
    options.validate()
    sizes = options.split_sizes()
    seed = options.seed
    out = Path(out_dir)
    _prepare(out, overwrite)
    if options.world == "highres":
        from vlbridge.data.synthetic.highres import synthesize_highres  # it builds on this module's writers

        return synthesize_highres(out, options)
    captions, instruct, regions, scene_rows, train_items = [], [], [], [], []
    renders: list[tuple[Scene, Path]] = []
    counts: dict[str, Counter[str]] = {t: Counter() for t in TYPES}
    seen: set[tuple] = set()
    turns = (options.turns[0], options.turns[1])
    for index in range(sizes["train"]):
        scene, qas, described = train_item(
            index, seed, counts, turns, options.focus, options.spatial, options.varied_names
        )
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
    stats: dict[str, Any] = {"seed": seed, "image_size": options.image_size, "images": sizes}
    stats["splits"] = {"train": _answer_stats(train_items)}
    for split in ("val", "test"):
        items = _write_held_out(out, split, sizes[split], seed, seen, scene_rows, renders)
        stats["splits"][split] = _answer_stats(items)
    _render_all(renders, options.image_size)
    write_json(out / "captions.json", captions)
    write_json(out / "instruct.json", instruct)
    if options.drills:
        write_json(out / "drills.json", [drill(index, seed) for index in range(options.drills)])
    write_jsonl(out / "regions.jsonl", regions)
    write_jsonl(out / "scenes.jsonl", scene_rows)
    write_json(out / "stats.json", stats)
    return stats
