"""vlbridge's synthetic visual world (SPEC section 7): rendered scenes, questions and a dataset writer.

`synthesize(out_dir, SynthOptions(n=..., seed=...))` writes a dataset folder (images, stage-1 captions, stage-2
instructions, held-out questions, stats); `vlbridge data synth` is its command line (vlbridge.cli.data). Importing
this package does no work.
"""

from vlbridge.data.synthetic.options import SynthOptions
from vlbridge.data.synthetic.scenes import Scene, SceneObject, render_scene, sample_scene
from vlbridge.data.synthetic.tasks import ANSWERS, QA, TYPES, caption, propose
from vlbridge.data.synthetic.writer import synthesize

__all__ = [
    "ANSWERS",
    "QA",
    "TYPES",
    "Scene",
    "SceneObject",
    "SynthOptions",
    "caption",
    "propose",
    "render_scene",
    "sample_scene",
    "synthesize",
]
