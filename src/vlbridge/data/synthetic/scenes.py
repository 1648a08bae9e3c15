"""Scenes of vlbridge's synthetic visual world: seeded sampling as plain data, and rendering with Pillow.

No images can be downloaded, so vlbridge ships a small world of its own (SPEC section 7): 1-6 coloured shapes,
each alone in one region of a 3x3 grid, plus a short word to read in another region. The default image is 96x96
so that patch grids align with the regions: the default model's patch 32 gives one patch per region (one visual
token per object, which it reads best), and patch 8 gives exactly 4x4 patches per region, a small shape spanning
about 2 patches, a large one 3, and each glyph of the text about one patch.

A scene is frozen data with a JSON round trip, sampled by `sample_scene(seed)` from its own `random.Random(seed)`
(no global state), so any image can be re-derived from the seed stored beside it. Objects never overlap: each owns
a region and is kept inside it, which makes overlap impossible rather than merely rejected. `render_scene` draws
at twice the size and box-downsamples, for anti-aliased edges; the text uses Pillow's built-in default font
(`ImageFont.load_default(size)`), so no system font file is needed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 0),
    "yellow": (235, 205, 0),
    "green": (40, 160, 60),
    "cyan": (0, 185, 210),
    "blue": (40, 80, 220),
    "purple": (150, 60, 190),
    "grey": (130, 130, 130),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)  # region names in row-major order: region index = 3 * row + column
GRID = 3  # regions per side
WORDS: tuple[str, ...] = ("CAT", "DOG", "SUN", "BOX", "HAT", "CUP", "KEY", "MAP", "GO", "OK", "42", "7")
MAX_OBJECTS = 6

RADIUS = {"small": 0.07, "large": 0.12}  # shape radius as a fraction of the image side; a region is 1/3
TEXT_SIZE = 0.13  # font size as a fraction of the image side: 3 glyphs fit in a region
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)
_MARGIN = 0.012  # gap kept between a shape and the edge of its region
_TEXT_HALF_EXTENT = (0.16, 0.06)  # the widest word is about 0.31 x 0.11 of the image side
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class SceneObject:
    """One shape; (x, y) is its centre as a fraction of the image side, inside region `cell`."""

    shape: str
    colour: str
    size: str
    cell: int
    x: float
    y: float

    @property
    def row(self) -> int:
        """0 (top) .. 2 (bottom)."""
        return self.cell // GRID

    @property
    def col(self) -> int:
        """0 (left) .. 2 (right)."""
        return self.cell % GRID

    @property
    def position(self) -> str:
        """The region's name, e.g. "top left"."""
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Scene:
    """Objects, each in its own region, and a word drawn in one more free region."""

    seed: int
    objects: tuple[SceneObject, ...]
    text: str
    text_cell: int
    text_x: float
    text_y: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `Scene.from_dict` inverts it exactly."""
        return asdict(self) | {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Rebuild a scene written by `to_dict`."""
        fields = {k: data[k] for k in ("seed", "text", "text_cell", "text_x", "text_y")}
        return cls(objects=tuple(SceneObject(**o) for o in data["objects"]), **fields)

    def region_labels(self) -> dict[str, list[str | None]]:
        """Per attribute, one label per region in row-major order (None: not applicable there), for supervised
        vision pre-training (`regions.jsonl`): what each region holds (empty, object, text), the object's shape,
        colour and size, the word drawn in the text region, and the region's own position. Position is labelled
        because the heads are shared by all regions: without it the pre-training makes the features position-blind
        (experiments/shape_perception.py read a token's own region at 0.112, chance 0.111), and no question can say
        where an object is."""
        labels: dict[str, list[str | None]] = {"kind": ["empty"] * len(POSITIONS), "position": list(POSITIONS)}
        for name in ("shape", "colour", "size", "word"):
            labels[name] = [None] * len(POSITIONS)
        for obj in self.objects:
            labels["kind"][obj.cell] = "object"
            for name in ("shape", "colour", "size"):
                labels[name][obj.cell] = getattr(obj, name)
        labels["kind"][self.text_cell] = "text"
        labels["word"][self.text_cell] = self.text
        return labels

    def signature(self) -> tuple:
        """The scene's content without the jitter: two scenes with equal signatures pose the same questions."""
        objects = tuple(sorted((o.cell, o.shape, o.colour, o.size) for o in self.objects))
        return objects, self.text, self.text_cell


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (unlike `hash`, the same in every process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _place(rng: random.Random, cell: int, half_width: float, half_height: float) -> tuple[float, float]:
    """A centre in region `cell` that keeps an item of this half width and height inside the region."""
    slack_x = max(1 / 6 - half_width - _MARGIN, 0.0)
    slack_y = max(1 / 6 - half_height - _MARGIN, 0.0)
    x = (cell % GRID + 0.5) / GRID + rng.uniform(-slack_x, slack_x)
    y = (cell // GRID + 0.5) / GRID + rng.uniform(-slack_y, slack_y)
    return round(x, 4), round(y, 4)


def sample_scene(seed: int) -> Scene:
    """Sample a scene from `random.Random(seed)` alone.

    The number of objects is uniform over 1..6. Colours and shapes are drawn from small per-scene pools, so
    scenes with several objects of one colour or shape (needed for counting questions) are common; no two
    objects share both colour and shape, so "the red circle" always names exactly one object.
    """
    rng = random.Random(seed)
    n = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(9), n + 1)  # the last free region holds the text
    palette = rng.sample(list(COLOURS), rng.randint(1, n))
    shape_pool = rng.sample(SHAPES, rng.randint(1, n))
    used: set[tuple[str, str]] = set()
    objects = []
    for cell in cells[:n]:
        colour = rng.choice(palette)
        free = [s for s in shape_pool if (colour, s) not in used] or [s for s in SHAPES if (colour, s) not in used]
        shape = rng.choice(free)
        used.add((colour, shape))
        size = rng.choice(SIZES)
        x, y = _place(rng, cell, RADIUS[size], RADIUS[size])
        objects.append(SceneObject(shape, colour, size, cell, x, y))
    text = rng.choice(WORDS)
    text_x, text_y = _place(rng, cells[n], *_TEXT_HALF_EXTENT)
    return Scene(seed, tuple(objects), text, cells[n], text_x, text_y)


def _polygon(cx: float, cy: float, radii: list[float], start_deg: float) -> list[tuple[float, float]]:
    """Vertices at equal angles around (cx, cy), the i-th at distance radii[i]."""
    step = 2 * math.pi / len(radii)
    start = math.radians(start_deg)
    return [(cx + r * math.cos(start + i * step), cy + r * math.sin(start + i * step)) for i, r in enumerate(radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    """Draw one filled shape of radius r (pixels) centred at (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + 0.15 * r, [1.1 * r] * 3, -90), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, [r] * 4, -90), fill=fill)
    elif shape == "cross":
        w = 0.34 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy + 0.1 * r, [1.1 * r, 0.45 * r] * 5, -90), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")  # scenes only hold SHAPES


@functools.lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's embedded default font at `px` (a fixed-size bitmap font when Pillow lacks FreeType)."""
    return ImageFont.load_default(size=px)


def text_mask(text: str, px: int) -> Image.Image:
    """The word as a greyscale mask about `px` pixels high, from Pillow's built-in font only.

    With FreeType the scalable default font is drawn at that size, in bold; without it the fixed bitmap font
    is enlarged by a whole factor (nearest neighbour) so glyphs stay crisp.
    """
    font = _font(px)
    scalable = isinstance(font, ImageFont.FreeTypeFont)
    stroke = max(1, px // 24) if scalable else 0  # a thin outline makes the glyphs bold enough for 8-px patches
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    if not scalable:
        factor = max(1, round(0.75 * px / mask.height))
        mask = mask.resize((mask.width * factor, mask.height * factor), Image.Resampling.NEAREST)
    return mask


def render_scene(scene: Scene, image_size: int = 96) -> Image.Image:
    """Draw the scene as an RGB image of `image_size` x `image_size` pixels."""
    side = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_shape(draw, obj.shape, obj.x * side, obj.y * side, RADIUS[obj.size] * side, COLOURS[obj.colour])
    mask = text_mask(scene.text, round(TEXT_SIZE * side))
    corner = (round(scene.text_x * side - mask.width / 2), round(scene.text_y * side - mask.height / 2))
    image.paste(TEXT_COLOUR, (*corner, corner[0] + mask.width, corner[1] + mask.height), mask)
    return image.resize((image_size, image_size), Image.Resampling.BOX)
