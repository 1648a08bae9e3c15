"""The synthetic world at high resolution: small shapes and a small word that one low-resolution view cannot resolve.

SPEC section 3 (high resolution) needs a task where detail costs tokens: LLaVA-NeXT's AnyRes (Liu et al., 2024) and
LLaVA-Mini's HD crops (Zhang et al., 2025) look at an image in several crop-size views, a single view at the
encoder's size sees it shrunk. A scene here is the default world's layout shrunk by half into each quadrant: a 6 x 6
grid of regions (3 x 3 a quadrant), 1-4 small shapes of distinct colours and one word, each alone in a region. Shapes
and glyphs are half the default world's size relative to the image, so at 2x the encoder's size (the scale of a 2 x 2
crop or AnyRes tile) they are exactly as large as in the default world the encoder learnt from, and in one view at
the encoder's size they are half that: at 96 px a glyph is about 6 px high and a shape 6-7 px across, a fifth of the
default model's 32 px patch (`detail_pixels`).

Question types: `text` (which word) and `shape` (the shape of the COLOUR one) need that detail; `count` (how many
shapes) and `where` (the word's quadrant) are controls a blurred view still answers. The folder has the default
world's layout (writer.py): images/, captions.json, instruct.json (every training image asked each type, in a random
order, plus its caption), val.jsonl / test.jsonl (one question per image, types in turn, answers stratified so the
majority-answer baseline is about 1 / answers), scenes.jsonl and stats.json. `vlbridge data synth --world highres
--image-size 384` writes it; held-out scenes differ from every training scene (and test from validation).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vlbridge.data.synthetic.json_files import write_json, write_jsonl
from vlbridge.data.synthetic.options import SynthOptions
from vlbridge.data.synthetic.scenes import (
    BACKGROUND,
    COLOURS,
    RADIUS,
    SHAPES,
    TEXT_COLOUR,
    TEXT_SIZE,
    WORDS,
    _draw_shape,
    derive_seed,
    text_mask,
)
from vlbridge.data.synthetic.tasks import CAPTION_PROMPTS, QA, conversation

CELLS = 6  # regions per side: 3 x 3 per quadrant
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
MAX_SHAPES = 4
SCALE = 0.5  # sizes relative to the image, against the default world's
MARK_RADIUS = RADIUS["small"] * SCALE  # a shape's radius as a fraction of the image side
WORD_SIZE = TEXT_SIZE * SCALE  # font size as a fraction of the image side
_WORD_HALF = (0.078, 0.028)  # half extent of the widest word at WORD_SIZE, as fractions of the side
_SUPERSAMPLE = 2
TYPES = ("text", "shape", "count", "where")
DETAIL_TYPES = ("text", "shape")  # the types a single low-resolution view cannot answer
ANSWERS: dict[str, tuple[str, ...]] = {
    "text": WORDS,
    "shape": SHAPES,
    "count": tuple(str(n) for n in range(1, MAX_SHAPES + 1)),
    "where": QUADRANTS,
}


@dataclass(frozen=True)
class Mark:
    """One small shape; (x, y) is its centre as a fraction of the image side."""

    shape: str
    colour: str
    x: float
    y: float


@dataclass(frozen=True)
class HighResScene:
    """Small shapes and a word at (text_x, text_y), each alone in a region of the 6 x 6 grid."""

    seed: int
    marks: tuple[Mark, ...]
    text: str
    text_x: float
    text_y: float

    @property
    def quadrant(self) -> str:
        """The quadrant the word is in."""
        return QUADRANTS[2 * (self.text_y >= 0.5) + (self.text_x >= 0.5)]

    def signature(self) -> tuple:
        """What a question can depend on: the marks (shape, colour, region), the word and its region."""
        cell = lambda x, y: int(y * CELLS) * CELLS + int(x * CELLS)  # noqa: E731
        marks = sorted((m.shape, m.colour, cell(m.x, m.y)) for m in self.marks)
        return tuple(marks), self.text, cell(self.text_x, self.text_y)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detail_pixels(image_size: int, view_size: int) -> dict[str, float]:
    """How many pixels a word's glyphs (font size) and a shape (diameter) of an `image_size` scene span when it is
    seen as one `view_size` px view."""
    scale = view_size / image_size
    return {"glyph": WORD_SIZE * image_size * scale, "shape": 2 * MARK_RADIUS * image_size * scale}


def _centre(rng: random.Random, cell: int, half_w: float, half_h: float) -> tuple[float, float]:
    """A centre in region `cell` keeping an item of this half extent inside it (a small margin kept)."""
    size = 1 / CELLS
    x0, y0 = (cell % CELLS) * size, (cell // CELLS) * size
    slack_x, slack_y = max(size / 2 - half_w - 0.004, 0.0), max(size / 2 - half_h - 0.004, 0.0)
    x = x0 + size / 2 + rng.uniform(-slack_x, slack_x)
    return round(x, 4), round(y0 + size / 2 + rng.uniform(-slack_y, slack_y), 4)


def sample_scene(rng: random.Random, seed: int, kind: str | None = None, answer: str | None = None) -> HighResScene:
    """A scene from `rng`; with `kind` and `answer`, one where that question type's answer is `answer`."""
    n = int(answer) if kind == "count" and answer else rng.randint(1, MAX_SHAPES)
    colours = rng.sample(list(COLOURS), n)
    shapes = [rng.choice(SHAPES) for _ in range(n)]
    if kind == "shape" and answer:
        shapes[0] = answer  # the question asks about the first mark's colour
    text = answer if kind == "text" and answer else rng.choice(WORDS)
    if kind == "where" and answer:
        q = QUADRANTS.index(answer)
        rows, cols = range(3 * (q // 2), 3 * (q // 2) + 3), range(3 * (q % 2), 3 * (q % 2) + 3)
        text_cell = rng.choice([r * CELLS + c for r in rows for c in cols])
    else:
        text_cell = rng.randrange(CELLS * CELLS)
    cells = rng.sample([c for c in range(CELLS * CELLS) if c != text_cell], n)
    margin = MARK_RADIUS * 1.1
    marks = tuple(
        Mark(shape, colour, *_centre(rng, cell, margin, margin))
        for shape, colour, cell in zip(shapes, colours, cells, strict=True)
    )
    return HighResScene(seed, marks, text, *_centre(rng, text_cell, *_WORD_HALF))


def render(scene: HighResScene, image_size: int) -> Image.Image:
    """The scene as an RGB image of `image_size` px (drawn at twice the size, box-downsampled)."""
    side = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for mark in scene.marks:
        _draw_shape(draw, mark.shape, mark.x * side, mark.y * side, MARK_RADIUS * side, COLOURS[mark.colour])
    mask = text_mask(scene.text, round(WORD_SIZE * side))
    corner = (round(scene.text_x * side - mask.width / 2), round(scene.text_y * side - mask.height / 2))
    image.paste(TEXT_COLOUR, (*corner, corner[0] + mask.width, corner[1] + mask.height), mask)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def ask(scene: HighResScene, kind: str) -> QA:
    """The question of type `kind` about `scene` (shape: about its first mark)."""
    if kind == "text":
        return QA(kind, "What word is written in the image?", scene.text)
    if kind == "shape":
        mark = scene.marks[0]
        return QA(kind, f"What shape is the {mark.colour} object?", mark.shape)
    if kind == "count":
        return QA(kind, "How many shapes are there?", str(len(scene.marks)))
    return QA(kind, "Where is the word?", scene.quadrant)


def caption(scene: HighResScene, rng: random.Random) -> str:
    """The marks in a random order, then the word and where it is."""
    marks = rng.sample(scene.marks, len(scene.marks))
    names = ", ".join(f"a {m.colour} {m.shape}" for m in marks)
    noun = "shape" if len(marks) == 1 else "shapes"
    return f"{len(marks)} small {noun}: {names}. The word {scene.text}, {scene.quadrant}."


def answer_stats(qas: list[QA]) -> dict[str, Any]:
    """Counts, answer distribution and majority-answer baseline per question type."""
    types = {}
    for kind in TYPES:
        counts = Counter(qa.answer for qa in qas if qa.type == kind)
        total = sum(counts.values())
        top_answer, top = counts.most_common(1)[0] if counts else (None, 0)
        types[kind] = {
            "count": total,
            "majority_answer": top_answer,
            "majority_baseline": top / total if total else 0.0,
            "answers": {a: counts[a] for a in ANSWERS[kind]},
        }
    posed = [t for t in types.values() if t["count"]]
    mean = sum(t["majority_baseline"] for t in posed) / len(posed) if posed else 0.0
    return {"questions": len(qas), "mean_majority_baseline": mean, "types": types}


def synthesize_highres(out: Path, options: SynthOptions) -> dict[str, Any]:
    """Write the high-resolution world into `out` (made ready by the writer) and return its stats."""
    sizes, seed = options.split_sizes(), options.seed
    captions, instruct, scenes, train_qas = [], [], [], []
    seen: set[tuple] = set()
    for index in range(sizes["train"]):
        scene_seed = derive_seed(seed, "highres", "train", index)
        rng = random.Random(scene_seed)
        scene = sample_scene(rng, scene_seed)
        name, image = f"train_{index:06d}", f"images/train_{index:06d}.png"
        render(scene, options.image_size).save(out / image, format="PNG")
        qas = [ask(scene, kind) for kind in rng.sample(TYPES, len(TYPES))]
        described = conversation([QA("caption", rng.choice(CAPTION_PROMPTS), caption(scene, rng))])
        captions.append({"id": name, "image": image, "conversations": described})
        instruct.append({"id": name, "image": image, "conversations": conversation(qas)})
        instruct.append({"id": f"{name}_caption", "image": image, "conversations": described})
        scenes.append({"id": name, "image": image, "split": "train", "scene": scene.to_dict()})
        train_qas += qas
        seen.add(scene.signature())
    stats: dict[str, Any] = {"world": "highres", "seed": seed, "image_size": options.image_size, "images": sizes}
    stats["detail_types"] = list(DETAIL_TYPES)
    stats["splits"] = {"train": answer_stats(train_qas)}
    for split in ("val", "test"):
        rows, qas = [], []
        for index in range(sizes[split]):
            kind = TYPES[index % len(TYPES)]
            answers = ANSWERS[kind]
            answer = answers[(index // len(TYPES)) % len(answers)]
            scene_seed = derive_seed(seed, "highres", split, index)
            rng = random.Random(scene_seed)
            scene = sample_scene(rng, scene_seed, kind, answer)
            while scene.signature() in seen:
                scene = sample_scene(rng, scene_seed, kind, answer)
            seen.add(scene.signature())
            name, image = f"{split}_{index:06d}", f"images/{split}_{index:06d}.png"
            render(scene, options.image_size).save(out / image, format="PNG")
            qa = ask(scene, kind)
            rows.append({"question_id": name, "image": image, "question": qa.question, "answer": qa.answer})
            rows[-1]["type"] = kind
            scenes.append({"id": name, "image": image, "split": split, "scene": scene.to_dict()})
            qas.append(qa)
        write_jsonl(out / f"{split}.jsonl", rows)
        stats["splits"][split] = answer_stats(qas)
    write_json(out / "captions.json", captions)
    write_json(out / "instruct.json", instruct)
    write_jsonl(out / "scenes.jsonl", scenes)
    write_json(out / "stats.json", stats)
    return stats
