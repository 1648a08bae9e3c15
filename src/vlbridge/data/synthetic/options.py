"""The options of the synthetic world's writer, declared once for every place that sets them.

`SynthOptions` is what `synthesize` varies. The training recipe's `data.synth` section is read into it by
`vlbridge.config.from_dict` (an unknown key or a value of the wrong type raises ConfigError naming the key), and
`vlbridge data synth` makes one flag per field (the field name in kebab-case, its default, and the help text in the
field's metadata). Adding an option is a field here and its use in the writer: the recipe key and the flag follow.
Lists, not tuples, so a recipe holding these options dumps to YAML and reads back equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlbridge.data.synthetic.tasks import TYPES
from vlbridge.errors import ConfigError

MIN_IMAGE_SIZE = 48  # below this the rendered words are illegible
WORLDS = ("scenes", "highres")  # the default world; small shapes and a small word at high resolution (highres.py)
MIN_HIGHRES_SIZE = 192  # twice the default 96 px: the size at which highres details are as large as default ones


@dataclass(frozen=True)
class SynthOptions:
    """How many scenes to render, how they split, and what the training conversations and drills hold.

    `turns` (lowest, highest) is how many question turns a training image gets: more turns give more supervised
    answers for each image the model encodes. `focus` lists question types each training image gets one more turn of
    (a type twice: two more), for the types that need the most examples; `spatial` is the chance that a training
    relation or multiple-choice question names an object by its region (`tasks.propose`). `drills` text-only
    conversations of relation questions between regions named by place (`writer.drill`) go to `drills.json`, for a
    stage of their own before instruction tuning: comparing two regions is a step the language model learns from
    these in a hundred steps, and in most runs not at all from image questions among the other types.
    `varied_names` is the chance a caption names an object without its colour or its shape (`tasks.caption`).
    Held-out questions are the same whatever those five are: they shape training data only.

    Field metadata: `help` (the flag's help text), and for list fields `nargs` (how many values the flag takes; "+"
    when absent) and `metavar`.
    """

    n: int = field(default=5000, metadata={"help": "number of images over all splits"})
    seed: int = field(default=0, metadata={"help": "seed every scene, question and caption derives from"})
    image_size: int = field(default=96, metadata={"help": f"image side in pixels, at least {MIN_IMAGE_SIZE}"})
    test_fraction: float = field(default=0.1, metadata={"help": "share of the n images held out for test questions"})
    val_fraction: float = field(default=0.05, metadata={"help": "share held out for validation questions"})
    turns: list[int] = field(
        default_factory=lambda: [2, 5],
        metadata={"help": "question turns per training image: lowest, highest (drawn uniformly)", "nargs": 2},
    )
    focus: list[str] = field(
        default_factory=list,
        metadata={"help": "question types each training image gets one more turn of", "metavar": "TYPE"},
    )
    spatial: float = field(
        default=0.0,
        metadata={"help": "chance a training relation or multiple-choice question names an object by its region"},
    )
    drills: int = field(
        default=0,
        metadata={"help": "text-only relation conversations between regions named by place (drills.json)"},
    )
    varied_names: float = field(
        default=0.0, metadata={"help": "chance a caption names an object without its colour or its shape"}
    )
    world: str = field(
        default="scenes",
        metadata={"help": "scenes, or highres: small shapes and a small word for high-resolution models (384 px)"},
    )

    def split_sizes(self) -> dict[str, int]:
        """Images per split: the held-out shares of `n`, rounded, and the rest for training."""
        n_test, n_val = round(self.n * self.test_fraction), round(self.n * self.val_fraction)
        return {"train": self.n - n_test - n_val, "val": n_val, "test": n_test}

    def validate(self, where: str = "") -> None:
        """Raise ConfigError naming the field (under `where`, e.g. `data.synth`) and the fix for a value the writer
        cannot use; types are the reader's job (`from_dict`, argparse)."""
        key = f"{where}." if where else ""
        if self.n < 1:
            raise ConfigError(f"{key}n must be a positive number of images, got {self.n}")
        for name, value in (("test_fraction", self.test_fraction), ("val_fraction", self.val_fraction)):
            if not 0 <= value < 1:
                raise ConfigError(f"{key}{name} must be in [0, 1), got {value}")
        if self.split_sizes()["train"] < 1:
            raise ConfigError(
                f"{key}n={self.n} leaves no training images after test/val; raise n or lower the fractions"
            )
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"{key}image_size must be >= {MIN_IMAGE_SIZE} pixels for the text to stay legible, "
                f"got {self.image_size}; set it to {MIN_IMAGE_SIZE} or more"
            )
        if len(self.turns) != 2 or not 1 <= self.turns[0] <= self.turns[1]:
            raise ConfigError(
                f"{key}turns must be [lowest, highest] with 1 <= lowest <= highest, got {list(self.turns)}"
            )
        unknown = sorted(set(self.focus) - set(TYPES))
        if unknown:
            raise ConfigError(f"{key}focus names unknown question types {unknown}; choose from {', '.join(TYPES)}")
        for name, value in (("spatial", self.spatial), ("varied_names", self.varied_names)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{key}{name} must be a probability in [0, 1], got {value}")
        if self.world not in WORLDS:
            raise ConfigError(f"{key}world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        if self.world == "highres" and self.image_size < MIN_HIGHRES_SIZE:
            raise ConfigError(
                f"{key}image_size must be >= {MIN_HIGHRES_SIZE} for the highres world, got {self.image_size}; "
                "set it to 384 (twice a 192 px view, at which its details are as large as the default world's)"
            )
        if self.drills < 0:
            raise ConfigError(f"{key}drills must be a number of conversations >= 0, got {self.drills}")
