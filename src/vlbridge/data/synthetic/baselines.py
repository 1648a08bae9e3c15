"""The unbound baseline: what a model scores that sees every attribute in a scene but not which object has which.

A model that has not learned to bind attributes to objects can still count colours, shapes and sizes, see which
regions are occupied and read the word. Its best simple strategy is to answer an attribute question with the
scene's most common value of that attribute. On these scenes that is often right (colour pools are small), so the
majority-answer baseline alone understates what a model gets without binding. A model at or near this baseline on
colour, shape, position, existence or description has learned to see, not to bind.

`unbound_score` is the expected exact-match score of that strategy on one question (ties split evenly):

- colour, shape: the scene's most common colour / shape;
- count: counts need no binding (every question counts one attribute), so 1;
- position: one of the occupied regions, 1 / number of objects;
- relation: a coin flip, 1/2;
- existence: "yes" when the scene holds the colour and the shape, on any objects;
- text: reading needs no binding, so 1;
- multiple choice: the option most common in the scene (text stems: 1);
- description: the most common size, colour and shape together.
"""

from __future__ import annotations

from collections import Counter

from vlbridge.data.synthetic.scenes import Scene
from vlbridge.data.synthetic.tasks import LETTERS, QA


def _mode_score(scene: Scene, attribute: str, answer: str, options: tuple[str, ...] | None = None) -> float:
    """Chance that guessing the most common `attribute` value (among `options`, if given) is `answer`."""
    counts = Counter(getattr(o, attribute) for o in scene.objects)
    candidates = options if options is not None else tuple(counts)
    top = max(counts[c] for c in candidates)
    best = [c for c in candidates if counts[c] == top]
    return best.count(answer) / len(best)


def unbound_score(scene: Scene, qa: QA) -> float:
    """Expected score on `qa` of a model that knows the scene's attributes but not which object holds which."""
    if qa.type in ("colour", "shape"):
        return _mode_score(scene, qa.type, qa.answer)
    if qa.type in ("count", "text"):
        return 1.0
    if qa.type == "position":
        return 1 / len(scene.objects)
    if qa.type == "relation":
        return 0.5
    if qa.type == "existence":
        colour, shape = qa.question.rstrip("?").split()[-2:]
        present = any(o.colour == colour for o in scene.objects) and any(o.shape == shape for o in scene.objects)
        return float(present == (qa.answer == "yes"))
    if qa.type == "multiple_choice":
        if qa.question.startswith("What does the text say?"):
            return 1.0
        attribute = "colour" if qa.question.startswith("What colour") else "shape"
        options = qa.choices or ()
        return _mode_score(scene, attribute, options[LETTERS.index(qa.answer)], options)
    if qa.type == "description":
        size, colour, shape = qa.answer.split()
        score = 1.0
        for attribute, value in (("size", size), ("colour", colour), ("shape", shape)):
            score *= _mode_score(scene, attribute, value)
        return score
    raise ValueError(f"unknown question type {qa.type!r}")
