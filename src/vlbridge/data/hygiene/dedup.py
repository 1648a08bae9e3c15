"""Removing duplicate images and identical conversations from a LLaVA dataset (LLaVA-NeXT's data recipe).

Images are compared by file content (SHA-256: exact copies) and by perceptual hash (the `imagehash` package's pHash
by default: the signs of an image's low-frequency DCT coefficients, 64 bits; Zauner, "Implementation and Benchmarking
of Perceptual Image Hash Functions", 2010): two images whose hashes differ in at most `max_distance` bits (Hamming
distance) are near duplicates, e.g. the same picture resized, re-encoded or slightly recoloured. Each distinct image
file is compared with the ones kept before it, in the order records first name them.

A record is removed when one of its images is a duplicate of a different image file seen earlier (the same file
named again is not a duplicate: instruction data asks many questions about one image), or when an earlier record
holds the same conversation (every turn's text) about the same image files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image

from vlbridge.data.files import ImageFolder
from vlbridge.data.llava_json import Record
from vlbridge.errors import ConfigError, DataError, ImageError
from vlbridge.vision.loading import load_image

DEFAULT_MAX_DISTANCE = 4  # of 64 bits
HASHES = ("phash", "dhash", "average_hash")  # imagehash's functions: DCT, gradient, mean


@dataclass(frozen=True)
class Match:
    """An image that duplicates an earlier one: that image, the hashes' Hamming distance, same bytes or not."""

    original: str
    distance: int
    exact: bool


@dataclass(frozen=True)
class Removed:
    """A record dedup left out: why, and what it duplicates (an image name or a record id)."""

    id: str
    reason: str
    duplicate_of: str
    distance: int | None = None  # bits between the images' hashes (image duplicates)

    def row(self) -> dict[str, Any]:
        """The report line."""
        return {"id": self.id, "reason": self.reason, "duplicate_of": self.duplicate_of, "distance": self.distance}


def _hash_function(name: str) -> Callable[[PIL.Image.Image], Any]:
    if name not in HASHES:
        raise ConfigError(f"unknown image hash {name!r}; choose one of {', '.join(HASHES)}")
    import imagehash  # the `hygiene` extra

    return getattr(imagehash, name)


def _fingerprint(name: str, folder: ImageFolder, hasher: Callable[[PIL.Image.Image], Any]) -> tuple[str, int]:
    """(SHA-256 of the file, the perceptual hash as a 64-bit integer) of image `name`."""
    path = folder.path(name, f"image {name!r}")
    try:
        bits = np.asarray(hasher(load_image(path)).hash, dtype=bool).ravel()  # (64,)
    except ImageError as err:
        raise DataError(f"image {name!r}: {err}") from None
    return hashlib.sha256(path.read_bytes()).hexdigest(), int.from_bytes(np.packbits(bits).tobytes(), "big")


def match_images(
    names: Sequence[str], folder: ImageFolder, max_distance: int = DEFAULT_MAX_DISTANCE, hash_name: str = "phash"
) -> dict[str, Match]:
    """For each distinct image name that duplicates an earlier one, its Match (an exact copy: same file bytes, distance
    0). Names not in the result are kept as distinct images."""
    if max_distance < 0:
        raise ConfigError(f"max_distance counts differing hash bits and must be >= 0, got {max_distance}")
    hasher = _hash_function(hash_name)
    by_content: dict[str, str] = {}
    kept_names: list[str] = []
    kept_hashes = np.zeros(0, dtype=np.uint64)
    matches: dict[str, Match] = {}
    for name in dict.fromkeys(names):
        digest, value = _fingerprint(name, folder, hasher)
        if digest in by_content:
            matches[name] = Match(by_content[digest], 0, exact=True)
            continue
        by_content[digest] = name
        distances = np.bitwise_count(kept_hashes ^ np.uint64(value))  # (kept,) differing bits
        nearest = int(distances.argmin()) if len(distances) else -1
        if nearest >= 0 and distances[nearest] <= max_distance:
            matches[name] = Match(kept_names[nearest], int(distances[nearest]), exact=False)
        else:
            kept_names.append(name)
            kept_hashes = np.append(kept_hashes, np.uint64(value))
    return matches


def dedup_records(
    records: Sequence[Record],
    folder: ImageFolder,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    hash_name: str = "phash",
) -> tuple[list[Record], list[Removed]]:
    """(the records kept, in order; the ones removed, with reasons): image duplicates first, then identical
    conversations about the same images."""
    matches = match_images([name for r in records for name in r.images], folder, max_distance, hash_name)
    seen: dict[tuple[Any, ...], str] = {}
    kept: list[Record] = []
    removed: list[Removed] = []
    for record in records:
        duplicate = next((name for name in record.images if name in matches), None)
        if duplicate is not None:
            match = matches[duplicate]
            kind = "an exact copy" if match.exact else f"a near duplicate ({match.distance} bits of {hash_name} apart)"
            reason = f"image {duplicate!r} is {kind} of {match.original!r}"
            removed.append(Removed(record.id, reason, match.original, match.distance))
            continue
        key = (record.images, record.videos, tuple((turn["from"], turn["value"]) for turn in record.conversations))
        if key in seen:
            removed.append(
                Removed(record.id, f"the same conversation about the same images as {seen[key]!r}", seen[key])
            )
            continue
        seen[key] = record.id
        kept.append(record)
    return kept, removed
