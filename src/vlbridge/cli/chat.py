"""`vlbridge chat`: ask a model about images, one-shot or interactively, with streamed output or JSON.

The images (`--image`, repeatable) go with the first user turn still in the conversation, one `<image>` each, in the
order given; a video (`--video`, decoded once, sampled at `--fps` up to `--max-frames` frames) goes there as `<video>`.
An interactive conversation that outgrows the context drops its oldest turns, with a notice on stderr.
Questions read from stdin must be UTF-8: a line that is not is refused with its line number.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import vlbridge
from vlbridge.cli.arguments import first_undecodable, printable
from vlbridge.dtypes import DTYPE_CHOICES
from vlbridge.errors import ConfigError, ContextOverflowError, DataError
from vlbridge.highres.video import video_frames
from vlbridge.lm.int8 import QUANTIZATIONS
from vlbridge.vision.processor import load_image


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("chat", help="ask a model about an image (one-shot, or interactive without a question)")
    parser.add_argument("question", nargs="?", default=None, help="the question; omit it for an interactive session")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        help="image file the question is about; repeat it for several (one <image> each, in this order)",
    )
    parser.add_argument("--video", default=None, help="video file the question is about (frames sampled at --fps)")
    parser.add_argument("--fps", type=float, default=1.0, help="video frames sampled per second (default: 1)")
    parser.add_argument(
        "--max-frames", type=int, default=32, help="most video frames, spread over the whole video (default: 32)"
    )
    parser.add_argument("--text-only", action="store_true", help="load no vision weights (text-only deployment)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="weights dtype (default: fp32)")
    parser.add_argument("--quantize", default=None, choices=QUANTIZATIONS, help="int8: int8 weight-only LM layers")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="most tokens a reply may have")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature when sampling")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the K likeliest tokens only (0: all)")
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling: the likeliest tokens up to P (1: all)"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already in the text (1: none)"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable samples (default: none)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the text and token ids")
    parser.set_defaults(run=run)


def _notice(message: str) -> None:
    print(f"vlbridge chat: {message}", file=sys.stderr, flush=True)


class ChatSession:
    """A conversation with one model. History is kept between turns; the images go with the first user turn still in
    it, and when the history no longer fits the context beside `max_new_tokens` the oldest turns are dropped, each
    drop reported through `notify`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        images: list[Any],
        generation: dict[str, Any],
        notify: Callable[[str], None] = _notice,
        videos: list[Any] | None = None,
    ) -> None:
        """`videos`: decoded frames (a list of PIL images) per video, placed after the images' placeholders."""
        self.model, self.processor, self.images, self.generation = model, processor, images, generation
        self.videos = videos or []
        self.notify = notify
        self.turns: list[tuple[str, str]] = []  # (question, reply), oldest first

    def messages(self, question: str) -> list[dict[str, str]]:
        """The kept turns and `question`, the images' placeholders before the first user turn's text."""
        messages: list[dict[str, str]] = []
        for asked, reply in self.turns:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": reply}]
        messages.append({"role": "user", "content": question})
        placeholders = f"{self.processor.image_token}\n" * len(self.images)
        placeholders += f"{self.processor.video_token}\n" * len(self.videos)
        messages[0] = {"role": "user", "content": placeholders + messages[0]["content"]}
        return messages

    def _fitted(self, question: str) -> tuple[str, dict[str, Any]]:
        """The prompt and model inputs for `question` after the oldest turns that leave too little room for
        `max_new_tokens` are dropped; with no turns left to drop, the model's own ContextOverflowError stands."""
        limit, new_tokens = self.processor.max_length, self.generation["max_new_tokens"]
        dropped = 0
        while True:
            prompt = self.processor.apply_chat_template(self.messages(question), add_generation_prompt=True)
            try:
                media: dict[str, Any] = {"images": self.images or None}
                if self.videos:  # already sampled: every frame is kept
                    media = {"videos": self.videos, "max_frames": max(len(v) for v in self.videos)}
                inputs = self.processor(text=prompt, return_tensors="pt", **media)
                fits = limit is None or inputs["input_ids"].shape[1] + new_tokens <= limit
            except ContextOverflowError:
                if not self.turns:
                    raise
                fits = False
            if fits or not self.turns:
                break
            self.turns.pop(0)
            dropped += 1
        if dropped:
            self.notify(
                f"the conversation outgrew the context of {limit} tokens ({new_tokens} kept for the reply); "
                f"dropped the oldest {dropped} turn(s), {len(self.turns)} kept"
            )
        return prompt, inputs

    def ask(self, question: str, stream: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Answer `question`; `stream(text_piece)` receives the reply as it is generated."""
        prompt, inputs = self._fitted(question)
        new_ids: list[int] = []
        shown = ""
        for token in self.model.stream(**inputs, **self.generation):
            new_ids.append(int(token[0]))
            text = self.processor.decode(new_ids, skip_special_tokens=True)
            if stream is not None and text.startswith(shown):
                stream(text[len(shown) :])
                shown = text
        reply = self.processor.decode(new_ids, skip_special_tokens=True)
        self.turns.append((question, reply))
        return {"prompt": prompt, "text": reply, "token_ids": new_ids}


def read_questions(lines: Iterable[str | bytes]) -> Iterator[str]:
    """Stripped questions from `lines` (bytes are decoded as UTF-8) until an empty one; a line that is not UTF-8
    raises DataError naming stdin and the line number."""
    for number, line in enumerate(lines, 1):
        text = line.decode("utf-8", "surrogateescape") if isinstance(line, bytes) else line
        bad = first_undecodable(text)
        if bad is not None:
            raise DataError(
                f"the question '{printable(text.strip())}' is not valid UTF-8 at character {bad + 1}; "
                "send questions as UTF-8 text",
                "<stdin>",
                number,
            )
        question = text.strip()
        if not question:
            return
        yield question


def run(args: argparse.Namespace) -> int:
    """One-shot answer (streamed, or JSON), or an interactive loop reading questions from stdin."""
    if (args.image or args.video) and args.text_only:
        raise ConfigError("--image/--video and --text-only exclude each other: a text-only model cannot see them")
    if args.image and args.video:
        raise ConfigError("pass --image or --video, not both: a prompt takes images or a video")
    videos = [video_frames(args.video, args.fps, args.max_frames)] if args.video else []
    model, processor = vlbridge.load(
        args.model, vision=not args.text_only, dtype=args.dtype, device=args.device, quantize=args.quantize
    )
    images = [load_image(path) for path in args.image]
    generation = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "stop_strings": tuple(args.stop),
    }
    session = ChatSession(model, processor, images, generation, videos=videos)
    if args.question is not None:
        if args.json:
            print(json.dumps(session.ask(args.question)))
        else:
            session.ask(args.question, stream=_print_piece)
            print()
        return 0
    _notice("type a question, an empty line or Ctrl-D ends the session")
    # the bytes, where stdin has them: a line that is not UTF-8 is then found by its number, not by the decoder's chunk
    for question in read_questions(getattr(sys.stdin, "buffer", sys.stdin)):
        if args.json:
            print(json.dumps(session.ask(question)), flush=True)
        else:
            session.ask(question, stream=_print_piece)
            print(flush=True)
    return 0


def _print_piece(piece: str) -> None:
    print(piece, end="", flush=True)
