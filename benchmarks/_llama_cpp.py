"""llama.cpp, the CPU reference engine, timed on SmolLM2's GGUF at F32, F16 and Q8_0 for `real_llm_speed --llama-cpp`.

llama.cpp runs through `xllamacpp` (optional: `pip install "vlbridge[llamacpp]"`), a prebuilt CPU wheel of llama.cpp's
server with Python bindings, in a child process per file (`LlamaCpp`) that answers completion requests over a pipe
(the bindings also open a local HTTP port, unused here). Building `llama-cpp-python` from source took over 88 minutes
on the 2 shared cores and never finished, so it is not used.

The files are the shipped Q4_1 GGUF rewritten by `benchmarks/_gguf_rewrite.py`: F32 holds exactly the dequantised
weights vlbridge's fp32 model holds. Each request sends the prompt as token ids, asks for n greedy tokens (top-k 1,
temperature 0, end-of-sequence ignored) and disables the prompt cache, so every call evaluates the whole prompt as the
PyTorch engines do. The response carries llama.cpp's own timings (prompt eval ms, generation tokens/s), kept beside
the wall-clock times the benchmark takes for every engine alike.

Both engines use OpenMP, whose idle threads spin by default: after one engine's call its threads keep spinning while
the next engine runs. Run with `GOMP_SPINCOUNT=10000` (idle threads sleep after a short spin; it applies to both):
vlbridge's decode, whose layers synchronise their threads some 240 times a token, ran as fast as with the default
(int8 SmolLM2-135M: 9.0 ms a step either way, 2 AVX2 threads), where `OMP_WAIT_POLICY=passive` made it 1.8x slower
(16.2 ms). On a machine shared with other jobs, spinning made llama.cpp 15-25x slower (Q8_0 decode 1.0-1.7 tok/s
against 26-39 passive, 2 threads at a load average of ~6 on 2 cores).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import statistics
from multiprocessing.connection import Connection
from pathlib import Path

from benchmarks._gguf_rewrite import FILE_TYPES, rewritten

FTYPES = tuple(FILE_TYPES)


def available() -> bool:
    """Whether xllamacpp is installed (it is no dependency of vlbridge)."""
    return importlib.util.find_spec("xllamacpp") is not None


def llama_files(gguf: Path, cache: Path) -> dict[str, Path]:
    """{ftype: file}: `gguf` rewritten at each of FTYPES into `cache` (once)."""
    return {ftype: rewritten(gguf, cache, ftype) for ftype in FTYPES}


def _server(file: Path, context: int, threads: int) -> object:
    """An xllamacpp server on `file` with `context` tokens of context and `threads` threads."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(file)
    params.n_ctx = context
    params.n_batch = params.n_ubatch = 512  # the prompt in one batch, as the PyTorch engines take it
    params.n_parallel = 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.verbosity = 0
    return xllamacpp.Server(params)


def _serve(connection: Connection, file: Path, ids: list[int], max_tokens: int, threads: int) -> None:
    """The child process: answer each n received with (the n greedy new token ids, llama.cpp's timings)."""
    server = _server(file, len(ids) + max_tokens + 8, threads)
    connection.send("ready")
    while (n := connection.recv()) is not None:
        request = {
            "prompt": ids,
            "n_predict": n,
            "temperature": 0.0,
            "top_k": 1,
            "ignore_eos": True,
            "cache_prompt": False,
            "logprobs": 1,
        }
        response = server.handle_completions(request)
        if "error" in response:
            connection.send(RuntimeError(f"llama.cpp refused the request: {response['error']}"))
            continue
        tokens = [entry["id"] for entry in response["choices"][0]["logprobs"]["content"]]
        connection.send((tokens, response["timings"]))


class LlamaCpp:
    """generate(n) -> the n greedy new token ids after `ids`, by llama.cpp on `file` with `threads` threads; the
    timings llama.cpp reports for each call are appended to `timings`.

    llama.cpp runs in a child process that waits, blocked, between calls; the caller times each call's round trip
    (a pipe message each way, well under a millisecond). Inside the benchmark's process, llama.cpp's own OpenMP runtime
    beside PyTorch's halved PyTorch's two-thread throughput for the rest of the run (a plain 2-thread sum read 34
    GB/s instead of 60; bf16 decode of both PyTorch engines ran at half speed), even with llama.cpp idle."""

    def __init__(self, file: Path, ids: list[int], max_tokens: int, threads: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.connection, child = spawn.Pipe()
        self.process = spawn.Process(target=_serve, args=(child, file, ids, max_tokens, threads), daemon=True)
        self.process.start()
        if self.connection.recv() != "ready":
            raise RuntimeError(f"llama.cpp did not start on {file}")
        self.timings: list[dict[str, float]] = []

    def __call__(self, n: int) -> list[int]:
        self.connection.send(n)
        answer = self.connection.recv()
        if isinstance(answer, Exception):
            raise answer
        tokens, timings = answer
        self.timings.append(timings)
        return tokens

    def close(self) -> None:
        """Stop the child process."""
        self.connection.send(None)
        self.process.join()


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
    from tqdm import tqdm

    server = _server(file, max(len(window) for window in windows) + 8, threads)
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
