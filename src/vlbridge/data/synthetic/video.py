"""Short synthetic videos for the video path (SPEC sections 3 and 7): objects appear, move and disappear.

A clip lasts `steps` seconds. It holds 2-3 coloured shapes (distinct colours and shapes, from the scene world's
pools) on a white background. Each object moves in a straight line the whole time, left, right, up or down, and is
visible in 1-3 runs of whole seconds with at least one second between runs; no two objects first appear in the same
second, and exactly one object is visible in the last second. Questions, each answerable only from several frames:

- `order`: "Does the red circle appear before the blue square?" (yes / no, the pair in a random order);
- `direction`: "Which way does the red circle move?" (left / right / up / down) for the object seen longest;
- `count`: "How many times does the red circle appear?" (1 / 2 / 3);
- `end`: "What shape is there at the end?" (the shape of the one object visible in the last second).

A clip is plain data with a JSON round trip, sampled from its own `random.Random(seed)`; `render_frame` draws the
frame at any time with Pillow, so frames sampled at 1 fps (midpoints of each second) see every visible run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw

from vlbridge.data.synthetic.scenes import BACKGROUND, COLOURS, SHAPES, _draw_shape

DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
VIDEO_TYPES: tuple[str, ...] = ("order", "direction", "count", "end")
TRAVEL = 0.5  # how far an object moves over the clip, as a fraction of the frame side
RADIUS = 0.1  # object radius as a fraction of the frame side


@dataclass(frozen=True)
class ClipObject:
    """One object of a clip: what it is, where it starts (centre, fractions of the side), where it goes, and the
    seconds it is visible, as (first, last) runs."""

    colour: str
    shape: str
    x: float
    y: float
    direction: str
    runs: tuple[tuple[int, int], ...]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def visible(self, second: int) -> bool:
        return any(first <= second <= last for first, last in self.runs)

    def position(self, t: float, steps: int) -> tuple[float, float]:
        """Centre at time t seconds (linear over the clip)."""
        dx, dy = DIRECTIONS[self.direction]
        share = TRAVEL * t / steps
        return self.x + dx * share, self.y + dy * share


@dataclass(frozen=True)
class Clip:
    """A synthetic video: `steps` seconds of its objects."""

    steps: int
    objects: tuple[ClipObject, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Clip:
        objects = tuple(ClipObject(**{**o, "runs": tuple(tuple(r) for r in o["runs"])}) for o in data["objects"])
        return cls(steps=data["steps"], objects=objects)


def _runs(rng: random.Random, steps: int, count: int, start: int, to_end: bool) -> tuple[tuple[int, int], ...]:
    """Up to `count` runs of 1-3 visible seconds from second `start`, at least one second apart; the last run is
    stretched to the final second when `to_end`, and ends before it otherwise."""
    last = steps - 1 if to_end else steps - 2
    runs: list[tuple[int, int]] = []
    first = start
    while len(runs) < count and first <= last:
        end = min(first + rng.randint(0, 2), last)
        runs.append((first, end))
        first = end + 2 + rng.randint(0, 1)
    if to_end:
        runs[-1] = (runs[-1][0], steps - 1)
    return tuple(runs)


def sample_clip(seed: int, steps: int = 8) -> Clip:
    """A clip from its own seed (see the module docstring); `steps` >= 6 seconds."""
    rng = random.Random(seed)
    n = rng.randint(2, 3)
    colours, shapes = rng.sample(list(COLOURS), n), rng.sample(SHAPES, n)
    starts = sorted(rng.sample(range(steps // 2), n))
    ender = rng.randrange(n)
    objects = []
    for i in range(n):
        direction = rng.choice(list(DIRECTIONS))
        dx, dy = DIRECTIONS[direction]
        x = 0.5 - dx * TRAVEL / 2 + (rng.uniform(-0.25, 0.25) if dx == 0 else 0)
        y = 0.5 - dy * TRAVEL / 2 + (rng.uniform(-0.25, 0.25) if dy == 0 else 0)
        runs = _runs(rng, steps, rng.randint(1, 3), starts[i], i == ender)
        objects.append(ClipObject(colours[i], shapes[i], round(x, 4), round(y, 4), direction, runs))
    rng.shuffle(objects)
    return Clip(steps, tuple(objects))


def render_frame(clip: Clip, t: float, size: int) -> Image.Image:
    """The frame at time t seconds, size x size RGB."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    second = min(int(t), clip.steps - 1)
    for obj in clip.objects:
        if obj.visible(second):
            x, y = obj.position(t, clip.steps)
            _draw_shape(draw, obj.shape, x * size, y * size, RADIUS * size, COLOURS[obj.colour])
    return image


def question(clip: Clip, kind: str, rng: random.Random) -> tuple[str, str]:
    """A (question, answer) of type `kind` about `clip`."""
    objects = clip.objects
    if kind == "order":
        a, b = rng.sample(objects, 2)
        answer = "yes" if a.runs[0][0] < b.runs[0][0] else "no"
        return f"Does the {a.name} appear before the {b.name}?", answer
    if kind == "direction":
        seen = max(objects, key=lambda o: sum(last - first + 1 for first, last in o.runs))
        return f"Which way does the {seen.name} move?", seen.direction
    if kind == "count":
        obj = rng.choice(objects)
        return f"How many times does the {obj.name} appear?", str(len(obj.runs))
    if kind == "end":
        (last,) = [o for o in objects if o.visible(clip.steps - 1)]
        return "What shape is there at the end?", last.shape
    raise ValueError(f"unknown video question type {kind!r}")


def caption(clip: Clip) -> str:
    """Every object in order of first appearance: what it is, where it goes, how often it shows; then the end."""
    words = {1: "once", 2: "twice", 3: "three times"}
    ordered = sorted(clip.objects, key=lambda o: o.runs[0][0])
    parts = [f"{_article(o.name)} {o.name} moves {o.direction} and appears {words[len(o.runs)]}." for o in ordered]
    (last,) = [o for o in clip.objects if o.visible(clip.steps - 1)]
    return " ".join(parts) + f" At the end there is a {last.shape}."


def _article(noun: str) -> str:
    return "An" if noun[0] in "aeiou" else "A"
