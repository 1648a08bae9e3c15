"""Hostile inputs against the embedded default: fuzzed image files, prompts with generation settings, and dataset
lines, with counts by outcome. The claim it backs: every bad input gets a typed `VlbridgeError` (0 untyped) and
memory stays bounded (peak RSS is reported, and a run fails if it passes --max-rss-mb), and no dataset line names an
image outside its image folder that the reader accepts ('escaped').

Images are mutations of small valid PNG, JPEG, GIF, WebP, BMP and TIFF files (bit flips, truncations, random
bytes, declared sizes rewritten up to 65535 x 65535), read by the default's image processor from files. Prompts mix
placeholders, lone surrogates, control characters and long text, with generation settings of wrong types, NaN and
unknown names; one in 50 also generates up to two tokens. Dataset lines are mutations of valid LLaVA records
(wrong types, deep nesting, broken JSON, paths leaving the image folder), each read as a one-line JSONL file.

    python -m benchmarks.fuzz_inputs [--n 100000] [--seed 0]
"""

from __future__ import annotations

import io
import json
import random
import resource
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

import vlbridge
from benchmarks._suite import Report, benchmark_parser
from vlbridge.data.llava_json import Record, load_llava
from vlbridge.errors import VlbridgeError

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
TYPED, UNTYPED, OK, ESCAPED = "typed", "untyped", "ok", "escaped"


def outcome(run: Callable[[], object]) -> str:
    """'ok', 'typed:ErrorClass' for a VlbridgeError, or 'untyped:ExceptionClass' for anything else."""
    try:
        run()
    except VlbridgeError as err:
        return f"{TYPED}:{type(err).__name__}"
    except Exception as err:  # the figure this benchmark exists for: any exception that is not ours
        return f"{UNTYPED}:{type(err).__name__}"
    return OK


def seed_images(rng: random.Random) -> list[bytes]:
    """Small valid files of every format, in several modes and sizes."""
    out = []
    for fmt in FORMATS:
        for mode, size in (("RGB", (17, 9)), ("L", (5, 33)), ("RGBA", (24, 24))):
            if fmt == "JPEG" and mode == "RGBA":
                continue
            image = Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * len(mode)))
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            out.append(buffer.getvalue())
    return out


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: flip bytes, truncate, splice random bytes, or rewrite a declared width/height."""
    kind = rng.randrange(5)
    buf = bytearray(data)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:
        buf = buf[: rng.randrange(len(buf))]
    elif kind == 2:
        at = rng.randrange(len(buf))
        buf[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:  # a declared size: PNG's IHDR width/height, or two big-endian/little-endian shorts anywhere
        at = 16 if buf[:4] == b"\x89PNG" else rng.randrange(max(1, len(buf) - 4))
        side = rng.choice((0, 1, 65535, 100000, 2**31 - 1, rng.randrange(1, 70000)))
        width = (side if rng.random() < 0.5 else rng.randint(1, 4)).to_bytes(4, "big")
        buf[at : at + 4] = width if buf[:4] == b"\x89PNG" else width[2:] + width[2:]
    else:
        buf = bytearray(buf[:8] + rng.randbytes(rng.randint(0, 200)))
    return bytes(buf)


def random_text(rng: random.Random) -> str:
    """Text with placeholders, lone surrogates, control characters, non-ASCII and now and then a lot of it."""
    pieces = [
        lambda: "<image>",
        lambda: "\n",
        lambda: chr(rng.randrange(0xD800, 0xE000)),
        lambda: chr(rng.randrange(0, 32)),
        lambda: chr(rng.randrange(0x80, 0x2FFFF)),
        lambda: "".join(rng.choices(string.printable, k=rng.randint(1, 20))),
        lambda: "What colour is the square?",
        lambda: "x" * rng.choice((1, 100, 5000)),
        lambda: "",
    ]
    return "".join(rng.choice(pieces)() for _ in range(rng.randint(0, 6)))


def random_value(rng: random.Random) -> Any:
    return rng.choice(
        (0, 1, -1, 2.5, float("nan"), float("inf"), True, None, "2", [], [""], ["\n"], 10**9, 0.5, 1e-9, (7,))
    )


SETTINGS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop_strings",
    "seed",
    "eos_token_id",
    "pad_token_id",
    "max_length",
    "num_beams",
)


def ask(model: Any, processor: Any, text: str, images: list[Path], settings: dict[str, Any], generate: bool) -> None:
    """Build the model's inputs for `text`, read the generation `settings`, and maybe generate two tokens."""
    inputs = processor(text=text, images=images or None, return_tensors="pt")
    model.generation_config(**settings)
    if generate:
        model.generate(**inputs, **{**settings, "max_new_tokens": 2})


def random_record(rng: random.Random, image: str) -> str:
    """One JSONL line: a valid LLaVA record, mutated."""
    record: dict[str, Any] = {
        "id": "r1",
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}],
    }
    kind = rng.randrange(7)
    if kind == 0:
        record[rng.choice(("id", "image", "conversations"))] = random_value(rng)
    elif kind == 1:
        record["image"] = rng.choice(("../outside.png", "/etc/passwd", "../../../../etc/hostname", "", "a\x00b.png"))
    elif kind == 2:
        record["conversations"] = [
            {rng.choice(("from", "role", "x")): random_value(rng), "value": random_text(rng)}
            for _ in range(rng.randint(0, 3))
        ]
    elif kind == 3:
        depth = rng.choice((10, 1000, 100000))
        return '{"id": ' + "[" * depth + "]" * depth + "}"
    elif kind == 4:
        text = json.dumps(record)
        return text[: rng.randrange(len(text))]
    elif kind == 5:
        return rng.choice(("[]", "null", "1", '"s"', "{}", "\ufeff{}", json.dumps([record])))
    return json.dumps(record)


def inside(records: list[Record], folder: Path) -> bool:
    """Whether every image path the records name resolves inside `folder` (what a reader may open)."""
    return all((folder / image).resolve().is_relative_to(folder.resolve()) for r in records for image in r.images)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="inputs in all, a third of each kind (--quick: 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-mb", type=float, default=4096, help="fail if peak RSS passes this")
    args = parser.parse_args()
    n = 300 if args.quick else args.n
    rng = random.Random(args.seed)
    model, processor = vlbridge.load()
    image_processor = processor.image_processor
    counts: dict[str, Counter[str]] = {"images": Counter(), "prompts": Counter(), "dataset lines": Counter()}
    examples: dict[str, str] = {}
    seeds = seed_images(rng)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        valid = root / "images" / "valid.png"
        valid.parent.mkdir()
        Image.new("RGB", (48, 48), (0, 128, 0)).save(valid)
        file, lines = root / "images" / "fuzz.bin", root / "data.jsonl"
        for i in tqdm(range(n), desc="fuzz", unit="input", mininterval=2):
            kind = ("images", "prompts", "dataset lines")[i % 3]
            if kind == "images":
                file.write_bytes(mutate_bytes(rng.choice(seeds), rng))
                result = outcome(lambda: image_processor.preprocess_one(file))
                label = f"{len(file.read_bytes())} bytes"
            elif kind == "prompts":
                text = random_text(rng)
                settings = {rng.choice(SETTINGS): random_value(rng) for _ in range(rng.randint(0, 2))}
                images = [valid] * rng.choice((text.count("<image>"), 0, 1))
                generate = i % 150 == 1

                def ask(
                    text: str = text, images: list = images, settings: dict = settings, go: bool = generate
                ) -> None:
                    inputs = processor(text=text, images=images or None, return_tensors="pt")
                    model.generation_config(**settings)
                    if go:
                        model.generate(**inputs, **{**settings, "max_new_tokens": 2})

                result = outcome(ask)
                label = repr(text[:80]) + f" {settings}"
            else:
                line = random_record(rng, "valid.png")
                lines.write_text(line + "\n", encoding="utf-8", errors="surrogatepass")
                result = outcome(lambda: load_llava(lines, root / "images"))
                if result == OK and not inside(load_llava(lines, root / "images").items, root / "images"):
                    result = ESCAPED
                label = repr(line[:120])
            counts[kind][result] += 1
            examples.setdefault(f"{kind} {result}", label)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = Report("fuzz_inputs", args)
    report.line(f"{n} inputs (seed {args.seed}) in {seconds:.0f} s; peak RSS {peak_mb:.0f} MB")
    failures = 0
    for kind, by_outcome in counts.items():
        report.line(f"\n{kind}: {sum(by_outcome.values())}")
        for result, count in sorted(by_outcome.items(), key=lambda item: -item[1]):
            report.line(f"  {count:>7}  {result:<40} e.g. {examples[f'{kind} {result}']}")
            failures += count if result.startswith((UNTYPED, ESCAPED)) else 0
    report.line(f"\nuntyped or escaped: {failures}")
    report.save()
    if failures or peak_mb > args.max_rss_mb:
        raise SystemExit(
            f"{failures} untyped or escaped outcome(s); peak RSS {peak_mb:.0f} MB (limit {args.max_rss_mb:.0f})"
        )


if __name__ == "__main__":
    main()
