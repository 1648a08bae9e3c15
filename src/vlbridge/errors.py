"""Typed, actionable errors: every user-facing failure names the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class VlbridgeError(Exception):
    """Base class of every error vlbridge raises on bad input or state."""


class ConfigError(VlbridgeError):
    """A config key is unknown, has the wrong type, or a name is not registered."""


class CheckpointError(VlbridgeError):
    """A checkpoint path is missing, or its files or weight keys do not fit the model."""


class ImageError(VlbridgeError):
    """An image file is missing, corrupt or not an image."""


class PlaceholderError(VlbridgeError):
    """The number of `<image>` placeholders does not match the number of images given."""


class ContextOverflowError(VlbridgeError):
    """A prompt (text plus visual tokens) does not fit the language model's context window."""


class ModalityError(VlbridgeError):
    """A request uses a modality (vision) that this model or deployment does not have."""


class TrainingError(VlbridgeError):
    """A training stage cannot go on: its loss or gradient norm became NaN or infinite (names the stage and step)."""


class DataError(VlbridgeError):
    """A dataset record is malformed; carries the file and line so the user can fix it."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class PromptError(DataError):
    """A prompt cannot be encoded or continued: it is not text, holds a lone surrogate, or has no tokens.

    A DataError, so a dataset reader that catches DataError can add the file and line of the record it came from.
    """


class VideoError(DataError):
    """A video file is missing, corrupt, empty, has no decodable video frames, or is not a video at all."""
