"""llama.cpp, the CPU reference engine, timed on SmolLM2's GGUF at F32, F16 and Q8_0 for `real_llm_speed --llama-cpp`.

llama.cpp runs through `xllamacpp` (optional: `pip install "vlbridge[llamacpp]"`), a prebuilt CPU wheel of llama.cpp's
server with Python bindings: a completion request is answered in-process (the bindings also open a local HTTP port,
unused here). Building `llama-cpp-python` from source took over 88 minutes on the 2 shared cores and never finished,
so it is not used.

The files are the shipped Q4_1 GGUF rewritten by `benchmarks/_gguf_rewrite.py`: F32 holds exactly the dequantised
weights vlbridge's fp32 model holds. Each request sends the prompt as token ids, asks for n greedy tokens (top-k 1,
temperature 0, end-of-sequence ignored) and disables the prompt cache, so every call evaluates the whole prompt as the
PyTorch engines do. The response carries llama.cpp's own timings (prompt eval ms, generation tokens/s), kept beside
the wall-clock times the benchmark takes for every engine alike.

On a machine shared with other jobs, run with `OMP_WAIT_POLICY=passive` (it applies to both engines: this wheel's
llama.cpp and PyTorch both use OpenMP, which by default spins waiting threads): with 2 threads at a load average of
~6 on 2 cores, spinning made llama.cpp 15-25x slower (Q8_0 decode 1.0-1.7 tok/s against 26-39 passive).
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

from benchmarks._gguf_rewrite import FILE_TYPES, rewritten

FTYPES = tuple(FILE_TYPES)


def available() -> bool:
    """Whether xllamacpp is installed (it is no dependency of vlbridge)."""
    return importlib.util.find_spec("xllamacpp") is not None


def llama_files(gguf: Path, cache: Path) -> dict[str, Path]:
    """{ftype: file}: `gguf` rewritten at each of FTYPES into `cache` (once)."""
    return {ftype: rewritten(gguf, cache, ftype) for ftype in FTYPES}


class LlamaCpp:
    """generate(n) -> the n greedy new token ids after `ids`, by llama.cpp on `file` with `threads` threads; the
    timings llama.cpp reports for each call are appended to `timings`."""

    def __init__(self, file: Path, ids: list[int], max_tokens: int, threads: int) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(file)
        params.n_ctx = len(ids) + max_tokens + 8
        params.n_batch = params.n_ubatch = 512  # the prompt in one batch, as the PyTorch engines take it
        params.n_parallel = 1
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        self.server = xllamacpp.Server(params)
        self.ids = ids
        self.timings: list[dict[str, float]] = []

    def __call__(self, n: int) -> list[int]:
        request = {
            "prompt": self.ids,
            "n_predict": n,
            "temperature": 0.0,
            "top_k": 1,
            "ignore_eos": True,
            "cache_prompt": False,
            "logprobs": 1,
        }
        response = self.server.handle_completions(request)
        if "error" in response:
            raise RuntimeError(f"llama.cpp refused the request: {response['error']}")
        self.timings.append(response["timings"])
        return [entry["id"] for entry in response["choices"][0]["logprobs"]["content"]]


def own_figures(timings: list[dict[str, float]], new_tokens: int) -> tuple[float, float]:
    """(prefill s, decode tok/s) by llama.cpp's own timings of the benchmark's timed calls (1 and new_tokens + 1
    tokens; the warm-up and the greedy check have other lengths): medians of the prompt evaluation time over all of
    them and of the generation rate over the new_tokens + 1 ones."""
    timed = [t for t in timings if t["predicted_n"] in (1, new_tokens + 1)]
    prefill = statistics.median(t["prompt_ms"] for t in timed) / 1e3
    return prefill, statistics.median(t["predicted_per_second"] for t in timed if t["predicted_n"] == new_tokens + 1)


def forced_nll(file: Path, windows: list[list[int]], threads: int) -> tuple[float, int]:
    """(summed next-token NLL in nats, tokens predicted) of llama.cpp on `file` over `windows`, each token predicted
    once from the window's tokens before it, as `vlbridge.eval.retention.perplexity` counts them.

    The server returns no log-probabilities of the prompt, so the text is teacher-forced one token at a time: each
    request extends the previous prompt by one token (the prompt cache keeps the rest, so one token is evaluated),
    asks for one new token forced by a logit bias to be the text's next token, and reads its log-probability, which
    llama.cpp computes from the model's raw logits (before the bias and any sampler)."""
    import xllamacpp
    from tqdm import tqdm

    params = xllamacpp.CommonParams()
    params.model.path = str(file)
    params.n_ctx = max(len(window) for window in windows) + 8
    params.n_parallel = 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.verbosity = 0
    server = xllamacpp.Server(params)
    nll, count = 0.0, 0
    progress = tqdm(total=sum(len(window) - 1 for window in windows), desc=f"llama.cpp {file.name}", leave=False)
    for window in windows:
        for end in range(1, len(window)):
            request = {
                "prompt": window[:end],
                "n_predict": 1,
                "temperature": 0.0,
                "logprobs": 1,
                "cache_prompt": True,
                "logit_bias": [[window[end], 1000.0]],
            }
            entry = server.handle_completions(request)["choices"][0]["logprobs"]["content"][0]
            if entry["id"] != window[end]:
                raise RuntimeError(f"llama.cpp did not take the forced token {window[end]} (gave {entry['id']})")
            nll -= entry["logprob"]
            count += 1
            progress.update()
    progress.close()
    return nll, count
