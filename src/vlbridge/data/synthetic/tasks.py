"""Questions, answers and captions about synthetic scenes, balanced per question type.

Nine question types probe what a connector must carry from the image to the language model: attributes
(colour, shape), counting, absolute position, relations between two objects, existence (binding colour to shape),
reading the rendered word, multiple choice (the answer is a letter) and a short description of one object.
Answers come from small fixed vocabularies (`ANSWERS`). Every object a question names is named by a unique
combination of attributes (the fewest that single it out, never the attribute asked about), so no question is
ambiguous.

Training questions may name the objects of a relation or multiple-choice question by their region instead
(`spatial`, "Is the object in the top left left of the object in the center?"): a curriculum, not a test form.
Those two types compose a lookup with a second step (compare two regions; match an answer against lettered
options), and the language model learns the second step with literal inputs first; held-out questions always use
`refer`'s phrases.

Balance is by construction: `propose(kind, scene, answer, rng)` writes a question with a *given* answer or
returns None, `stratified_answer` deals the answers of one type out in shuffled rounds (so counts per answer
differ by at most one), and `sample_item` rejects whole scenes until one can pose the dealt answer. Extra turns
on a fixed scene take the least used answer the scene allows (`least_used`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vlbridge.data.synthetic.scenes import (
    COLOURS,
    GRID,
    MAX_OBJECTS,
    POSITIONS,
    SHAPES,
    SIZES,
    WORDS,
    Scene,
    SceneObject,
    derive_seed,
    sample_scene,
)

TYPES: tuple[str, ...] = (
    "colour",
    "shape",
    "count",
    "position",
    "relation",
    "existence",
    "text",
    "multiple_choice",
    "description",
)
LETTERS = ("A", "B", "C", "D")
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": tuple(str(k) for k in range(1, MAX_OBJECTS + 1)),
    "position": POSITIONS,
    "relation": ("yes", "no"),
    "existence": ("yes", "no"),
    "text": WORDS,
    "multiple_choice": LETTERS,
    "description": tuple(f"{size} {colour} {shape}" for size in SIZES for colour in COLOURS for shape in SHAPES),
}
CAPTION_PROMPTS = ("Describe the image briefly.", "Give a short description of the image.", "What is in the image?")
IMAGE_TOKEN = "<image>"
SPATIAL_TYPES = ("relation", "multiple_choice")  # the types whose training questions may name objects by region
MAX_ATTEMPTS = 20_000  # scenes tried per item; the rarest answer (one description) fits about 1 scene in 30

_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
_PLURAL |= {"cross": "crosses", "star": "stars"}
_REFERENCE_ORDER = (
    ("shape",),
    ("colour",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour"),
    ("size",),
    ("size", "colour", "shape"),
)  # the fewest attributes first; phrases with a shape noun first among equals


@dataclass(frozen=True)
class QA:
    """One question about a scene, its answer, and for multiple choice the options in letter order."""

    type: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None


def refer(scene: Scene, obj: SceneObject, exclude: frozenset[str] = frozenset()) -> str:
    """The shortest phrase that names `obj` alone in `scene`, using no attribute in `exclude`.

    Attributes are "size", "colour", "shape" and, as a last resort, "position" ("the object in the top left").
    """
    phrase = _attribute_phrase(scene, obj, exclude)
    if phrase is not None:
        return phrase
    assert "position" not in exclude, "colour and shape together are unique in every scene"
    return _by_region(obj.position)


def _attribute_phrase(scene: Scene, obj: SceneObject, exclude: frozenset[str]) -> str | None:
    """`refer`'s phrase from size, colour and shape, or None when those outside `exclude` fit other objects too."""
    for keys in _REFERENCE_ORDER:
        if exclude.intersection(keys):
            continue
        matches = [o for o in scene.objects if all(getattr(o, k) == getattr(obj, k) for k in keys)]
        if len(matches) == 1:
            words = [getattr(obj, k) for k in ("size", "colour") if k in keys]
            return "the " + " ".join([*words, obj.shape if "shape" in keys else "object"])
    return None


def _by_region(position: str) -> str:
    return f"the object in the {position}"


def _name(scene: Scene, obj: SceneObject, exclude: frozenset[str], rng: random.Random, spatial: float) -> str:
    """`refer`'s phrase, or with probability `spatial` the object's region (no draw from `rng` when it is 0)."""
    return _by_region(obj.position) if spatial and rng.random() < spatial else refer(scene, obj, exclude)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _attribute(kind: str) -> Callable[[Scene, str, random.Random], QA | None]:
    """Questions "What {kind} is <object>?" about an object whose `kind` attribute (colour or shape) is the answer."""

    def ask(scene: Scene, answer: str, rng: random.Random) -> QA | None:
        objects = [o for o in scene.objects if getattr(o, kind) == answer]
        if not objects:
            return None
        return QA(kind, f"What {kind} is {refer(scene, rng.choice(objects), frozenset({kind}))}?", answer)

    return ask


def _count(scene: Scene, answer: str, rng: random.Random) -> QA | None:
    tallies = {"How many objects are there?": len(scene.objects)}
    tallies |= {f"How many {c} objects are there?": n for c, n in Counter(o.colour for o in scene.objects).items()}
    tallies |= {f"How many {_PLURAL[s]} are there?": n for s, n in Counter(o.shape for o in scene.objects).items()}
    questions = [q for q, n in tallies.items() if str(n) == answer]
    return QA("count", rng.choice(questions), answer) if questions else None


def _position(scene: Scene, answer: str, rng: random.Random) -> QA | None:
    objects = [o for o in scene.objects if o.position == answer]
    if not objects:
        return None
    return QA("position", f"Where is {refer(scene, objects[0], frozenset({'position'}))}?", answer)


def _relation_facts(a: int, b: int) -> list[tuple[str, bool]]:
    """(relation word, whether region a stands so to region b) for the axes on which the two regions differ."""
    facts = []
    if a % GRID != b % GRID:
        facts += [("left of", a % GRID < b % GRID), ("right of", a % GRID > b % GRID)]
    if a // GRID != b // GRID:
        facts += [("above", a // GRID < b // GRID), ("below", a // GRID > b // GRID)]
    return facts


def _relation(scene: Scene, answer: str, rng: random.Random, spatial: float = 0.0) -> QA | None:
    options = []
    for a in scene.objects:
        for b in scene.objects:
            facts = _relation_facts(a.cell, b.cell)
            options += [(a, b, word) for word, holds in facts if holds == (answer == "yes")]
    if not options:
        return None
    a, b, word = rng.choice(options)
    no_position = frozenset({"position"})
    first, second = (_name(scene, o, no_position, rng, spatial) for o in (a, b))
    return QA("relation", f"Is {first} {word} {second}?", answer)


def region_relation(rng: random.Random) -> QA:
    """A text-only relation question between two regions named by their place ("Is the object in the top left left of
    the object in the center?"): no image needed, so the language model can learn to compare regions by itself."""
    a, b = rng.sample(range(len(POSITIONS)), 2)
    word, holds = rng.choice(_relation_facts(a, b))
    question = f"Is {_by_region(POSITIONS[a])} {word} {_by_region(POSITIONS[b])}?"
    return QA("relation", question, "yes" if holds else "no")


def _existence(scene: Scene, answer: str, rng: random.Random) -> QA | None:
    present = sorted({(o.colour, o.shape) for o in scene.objects})
    if answer == "yes":
        colour, shape = rng.choice(present)
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colours, shapes = {c for c, _ in present}, {s for _, s in present}
        unbound = [(c, s) for c, s in absent if c in colours and s in shapes]  # both there, on different objects
        near_misses = [(c, s) for c, s in absent if c in colours or s in shapes]  # right colour or shape
        colour, shape = rng.choice(unbound or near_misses or absent)
    return QA("existence", f"Is there {_article(colour)} {colour} {shape}?", answer)


def _text(scene: Scene, answer: str, rng: random.Random) -> QA | None:
    return QA("text", "What does the text say?", answer) if scene.text == answer else None


def _multiple_choice(scene: Scene, answer: str, rng: random.Random, spatial: float = 0.0) -> QA | None:
    kind = rng.choice(("colour", "shape", "text"))
    if kind == "text":
        stem, correct = "What does the text say?", scene.text
    else:
        obj = rng.choice(scene.objects)
        stem, correct = f"What {kind} is {_name(scene, obj, frozenset({kind}), rng, spatial)}?", getattr(obj, kind)
    options = rng.sample([a for a in ANSWERS[kind] if a != correct], len(LETTERS) - 1)
    options.insert(LETTERS.index(answer), correct)
    lines = [stem, *(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=True))]
    question = "\n".join([*lines, "Answer with the option's letter."])
    return QA("multiple_choice", question, answer, tuple(options))


def _description(scene: Scene, answer: str, rng: random.Random) -> QA | None:
    objects = [o for o in scene.objects if f"{o.size} {o.colour} {o.shape}" == answer]
    if not objects:
        return None
    return QA("description", f"Describe the object in the {objects[0].position}.", answer)


_PROPOSERS: dict[str, Callable[..., QA | None]] = {
    "colour": _attribute("colour"),
    "shape": _attribute("shape"),
    "count": _count,
    "position": _position,
    "relation": _relation,
    "existence": _existence,
    "text": _text,
    "multiple_choice": _multiple_choice,
    "description": _description,
}


def propose(kind: str, scene: Scene, answer: str, rng: random.Random, spatial: float = 0.0) -> QA | None:
    """A question of type `kind` about `scene` whose answer is `answer`, or None if the scene cannot pose one.

    `spatial` (training only): the chance that a relation or multiple-choice question names an object by its region.
    """
    if kind in SPATIAL_TYPES:
        return _PROPOSERS[kind](scene, answer, rng, spatial)
    return _PROPOSERS[kind](scene, answer, rng)


def stratified_answer(kind: str, k: int, *seed_parts: object) -> str:
    """The k-th answer dealt for type `kind`: shuffled rounds of its answer vocabulary, so counts stay level."""
    space = ANSWERS[kind]
    order = random.Random(derive_seed(*seed_parts, kind, k // len(space))).sample(space, len(space))
    return order[k % len(space)]


def sample_item(
    kind: str, answer: str, rng: random.Random, reject: Callable[[Scene], bool] | None = None, spatial: float = 0.0
) -> tuple[Scene, QA]:
    """Sample scenes (each from its own seed drawn from `rng`) until one poses `kind` with `answer`.

    `reject` vetoes scenes, e.g. those already used by another split; `spatial` as in `propose`.
    """
    for _ in range(MAX_ATTEMPTS):
        scene = sample_scene(rng.getrandbits(63))
        if reject is not None and reject(scene):
            continue
        qa = propose(kind, scene, answer, rng, spatial)
        if qa is not None:
            return scene, qa
    raise RuntimeError(f"no scene posed a {kind} question answered {answer!r} in {MAX_ATTEMPTS} tries")


def least_used(kind: str, scene: Scene, counts: Counter[str], rng: random.Random, spatial: float = 0.0) -> QA | None:
    """The question of type `kind` on this fixed scene whose answer has been used least so far (ties at random)."""
    space = list(ANSWERS[kind])
    rng.shuffle(space)
    for answer in sorted(space, key=lambda a: counts[a]):
        qa = propose(kind, scene, answer, rng, spatial)
        if qa is not None:
            return qa
    return None


_FORM_SLOTS = (
    ("RELATION", ("left of", "right of", "above", "below")),
    ("PLACE", POSITIONS),
    ("SIZE", SIZES),
    ("COLOUR", tuple(COLOURS)),
    ("SHAPE", tuple(_PLURAL.values()) + SHAPES),
)
_FORM_PATTERNS = [(slot, re.compile(r"\b(?:" + "|".join(words) + r")\b")) for slot, words in _FORM_SLOTS]


def question_form(question: str) -> str:
    """The question's first line with its relation, place, size, colour and shape words replaced by slot names.

    "What colour is the small star?" -> "What colour is the SIZE SHAPE?": how an object is named, which is where
    binding fails (e.g. objects named by size, or counts of one colour), while the type alone hides it.
    """
    form = question.removeprefix(IMAGE_TOKEN).strip().split("\n")[0]
    for slot, pattern in _FORM_PATTERNS:
        form = pattern.sub(slot, form)
    return re.sub(r"\ban (?=[A-Z]{4})", "a ", form)  # "an orange" and "a red" are one form


def caption(scene: Scene, rng: random.Random, varied_names: float = 0.0) -> str:
    """A one-sentence description of every object, twice, how many of each colour and shape, and the word.

    Each object is given as two facts whose value comes right after its key: first every object's name (as a
    question would name it, `refer`) then its region ("star top left"), then every object's region then its size,
    colour and shape ("top left small red circle"); then each colour and shape present with its count ("red 2,
    stars 1"). Each list is in its own random order. In a random order a value can only be read from the image, and
    with nothing between key and value the lookup is one hop from the token at hand. Questions need two: gather the
    words that name the object at the answer, then find it in the image, and neither gets a gradient before the
    other works. With filler words between key and value ("a small red circle in the top left") captions are
    two-hop too: on ideal visual tokens (experiments/ideal_vision.py) position questions stayed at 0.25 after 600
    steps with those captions and reached 0.71 with these. With one of the two facts drawn per object, the default
    recipe's model put a named object in its region in 28% of its own captions and answered 0.33 of position
    questions; with both (and its ViT frozen in alignment), 0.90, and with the counts too, 0.99 (count questions
    0.67 -> 0.76, existence 0.73 -> 0.92).

    With probability `varied_names` (no draw from `rng` when it is 0) an object's name leaves out its colour or its
    shape (drawn at random), as colour and shape questions name it ("small star" beside a large one), when it can:
    the shortest names rarely join two attributes, and held-out questions that need such a name were answered at
    0.25-0.50 ("What colour is the small star?") where one attribute suffices at 0.86-0.93.
    """
    objects = scene.objects

    def name(obj: SceneObject) -> str:
        if varied_names and rng.random() < varied_names:
            phrase = _attribute_phrase(scene, obj, frozenset({"position", rng.choice(("colour", "shape"))}))
            if phrase is not None:
                return phrase
        return refer(scene, obj, frozenset({"position"}))

    named = [f"{name(o).removeprefix('the ')} {o.position}" for o in objects]
    placed = [f"{o.position} {o.size} {o.colour} {o.shape}" for o in objects]
    tallies = [f"{colour} {n}" for colour, n in Counter(o.colour for o in objects).items()]
    tallies += [f"{_PLURAL[shape]} {n}" for shape, n in Counter(o.shape for o in objects).items()]
    noun = "shape" if len(objects) == 1 else "shapes"
    lists = [", ".join(rng.sample(facts, len(facts))) for facts in (named, placed, tallies)]
    return f"{len(objects)} {noun}: {'; '.join(lists)}. The text says {scene.text}."


def conversation(qas: Iterable[QA], image: bool = True) -> list[dict[str, str]]:
    """LLaVA conversation turns for these questions; `<image>` opens the first human turn only (none if not `image`)."""
    turns = []
    for i, qa in enumerate(qas):
        prefix = f"{IMAGE_TOKEN}\n" if i == 0 and image else ""
        turns += [{"from": "human", "value": prefix + qa.question}, {"from": "gpt", "value": qa.answer}]
    return turns
