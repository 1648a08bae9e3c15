"""`vlbridge chat`: ask a model about an image, one-shot or interactively, with streamed output or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import vlbridge
from vlbridge.dtypes import DTYPE_CHOICES
from vlbridge.errors import ConfigError
from vlbridge.lm.int8 import QUANTIZATIONS
from vlbridge.vision.processor import load_image


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("chat", help="ask a model about an image (one-shot, or interactive without a question)")
    parser.add_argument("question", nargs="?", default=None, help="the question; omit it for an interactive session")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--image", default=None, help="image file the question is about")
    parser.add_argument("--text-only", action="store_true", help="load no vision weights (text-only deployment)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="weights dtype (default: fp32)")
    parser.add_argument("--quantize", default=None, choices=QUANTIZATIONS, help="int8: int8 weight-only LM layers")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the text and token ids")
    parser.set_defaults(run=run)


class ChatSession:
    """A conversation with one model: the image goes with the first user turn, history is kept between turns."""

    def __init__(self, model: Any, processor: Any, image: Any, generation: dict[str, Any]) -> None:
        self.model, self.processor, self.image, self.generation = model, processor, image, generation
        self.messages: list[dict[str, str]] = []

    def ask(self, question: str, stream: Any = None) -> dict[str, Any]:
        """Answer `question`; `stream(text_piece)` receives the reply as it is generated."""
        content = question
        if self.image is not None and not self.messages:
            content = f"{self.processor.image_token}\n{question}"
        self.messages.append({"role": "user", "content": content})
        prompt = self.processor.apply_chat_template(self.messages, add_generation_prompt=True)
        images = [self.image] if self.image is not None else None
        inputs = self.processor(text=prompt, images=images, return_tensors="pt")
        new_ids: list[int] = []
        shown = ""
        for token in self.model.stream(**inputs, **self.generation):
            new_ids.append(int(token[0]))
            text = self.processor.decode(new_ids, skip_special_tokens=True)
            if stream is not None and text.startswith(shown):
                stream(text[len(shown) :])
                shown = text
        reply = self.processor.decode(new_ids, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": reply})
        return {"prompt": prompt, "text": reply, "token_ids": new_ids}


def run(args: argparse.Namespace) -> int:
    """One-shot answer (streamed, or JSON), or an interactive loop reading questions from stdin."""
    if args.image is not None and args.text_only:
        raise ConfigError("--image and --text-only exclude each other: a text-only model cannot see the image")
    model, processor = vlbridge.load(
        args.model, vision=not args.text_only, dtype=args.dtype, device=args.device, quantize=args.quantize
    )
    image = load_image(args.image) if args.image is not None else None
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
    session = ChatSession(model, processor, image, generation)
    if args.question is not None:
        if args.json:
            print(json.dumps(session.ask(args.question)))
        else:
            session.ask(args.question, stream=_print_piece)
            print()
        return 0
    print("vlbridge chat: type a question, an empty line or Ctrl-D ends the session", file=sys.stderr)
    for line in sys.stdin:
        question = line.strip()
        if not question:
            break
        if args.json:
            print(json.dumps(session.ask(question)), flush=True)
        else:
            session.ask(question, stream=_print_piece)
            print(flush=True)
    return 0


def _print_piece(piece: str) -> None:
    print(piece, end="", flush=True)
