"""llama.cpp (through `llama-cpp-python`, optional: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python`
builds it from source) timed on SmolLM2's GGUF at F32, F16 and Q8_0, for `real_llm_speed --llama-cpp`.

The shipped file is Q4_1; llama.cpp's own quantiser (`llama_model_quantize`, allowed to requantise) writes the F32,
F16 and Q8_0 files from it into the cache, once. F32 holds exactly the dequantised Q4_1 weights the HF directory holds.
Each file runs as a `generate(n)` the benchmark times as it times both PyTorch engines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

FTYPES = {"F32": 0, "F16": 1, "Q8_0": 7}
"""llama.cpp's `llama_ftype` values (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0)."""


def available() -> bool:
    """Whether llama-cpp-python is installed (it is no dependency of vlbridge)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def requantized(gguf: Path, cache: Path, ftype: str) -> Path:
    """`gguf` written at `ftype` into `cache` by llama.cpp's quantiser (once)."""
    import ctypes

    import llama_cpp

    out = cache / f"{gguf.stem.rsplit('.', 1)[0]}.{ftype}.gguf"
    if not out.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[ftype]
        params.allow_requantize = True
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not write {ftype} from {gguf}")
        tmp.rename(out)
    return out


def llama_generate(file: Path, ids: list[int], max_tokens: int, threads: int) -> Callable[[int], list[int]]:
    """generate(n) -> n greedy new tokens after `ids` with llama.cpp on `file`: the prompt in one `eval`, then one
    `eval` per token, each token the argmax of the last logits (as vlbridge's greedy step)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(file), n_ctx=len(ids) + max_tokens + 8, n_batch=512, n_threads=threads, verbose=False
    )

    def generate(n: int) -> list[int]:
        llm.reset()
        llm.eval(ids)
        out = []
        for step in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if step < n - 1:
                llm.eval(out[-1:])
        return out

    return generate
