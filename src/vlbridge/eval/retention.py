"""Text-ability retention: does the LLM inside a VLM still do text as well as the LLM it started from (SPEC section 5)?

The seeds' claim: after multimodal tuning the LLM's text ability stays within +-3% of the base LLM, and a text-only
deployment (the vision plug-in never loaded) takes ~40% less memory. This module measures both:

- perplexity on held-out text, token-level with the same tokenizer: the text is tokenized once and cut into
  windows of the context length (each starting with BOS when the tokenizer has one, so every text token is
  predicted exactly once); the NLL is summed exactly over all predicted tokens and ppl = exp(sum / count);
- accuracy on text QA (JSONL lines {"question", "answer"}): greedy replies, asked in the model's chat template or as
  bare text, scored right when an accepted answer appears in the reply's first sentence (chat) or first line (bare
  text: with no end of turn, a model runs on past it) as whole words after VQA normalisation;
- the relative difference (vlm - base) / base of each, judged against a tolerance (|difference| <= 3%);
- the resident memory of loading the VLM text-only against loading it whole, each in a fresh process.

With `quantize` (e.g. "int8", vlbridge.lm.int8's weight-only quantisation) the VLM side is loaded quantised and the
base as it is: given the same checkpoint twice, the report is the perplexity change the quantisation causes.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from vlbridge.bench.measure import run_isolated, status_kib
from vlbridge.data.files import iter_jsonl, read_text
from vlbridge.dtypes import resolve_dtype
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval.scoring import contains_answer

DEFAULT_TOLERANCE = 0.03
QA_PROMPTS = ("chat", "raw")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")


@dataclass(frozen=True)
class Perplexity:
    """Summed next-token NLL (nats) over `tokens` predicted tokens; ppl = exp(nll_sum / tokens)."""

    nll_sum: float
    tokens: int

    @property
    def ppl(self) -> float:
        """exp(mean NLL)."""
        return math.exp(self.nll_sum / self.tokens)


def windows(ids: Sequence[int], length: int, bos_id: int | None) -> list[list[int]]:
    """Cut `ids` into model inputs of at most `length` tokens that predict every token once.

    With a BOS id each window is [BOS] + the next length - 1 tokens; without, windows of `length` tokens whose first
    token is context only (and a last window of one token, which predicts nothing, is dropped).
    """
    if length < 2:
        raise ConfigError(f"the perplexity window must hold at least 2 tokens, got {length}")
    if bos_id is not None:
        step = length - 1
        return [[bos_id, *ids[i : i + step]] for i in range(0, len(ids), step)]
    return [list(ids[i : i + length]) for i in range(0, len(ids), length) if len(ids[i : i + length]) > 1]


@torch.no_grad()
def perplexity(model: Any, ids: Sequence[int], length: int, bos_id: int | None, batch_size: int = 4) -> Perplexity:
    """Token-level perplexity of `model` (any module returning .logits (B, T, V) for input_ids) on `ids`."""
    chunks = windows(ids, length, bos_id)
    if not chunks:
        raise DataError("the held-out text has too few tokens to predict any; give it more text")
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    full = [c for c in chunks if len(c) == len(chunks[0])]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[c] for c in chunks[len(full) :]]
    for batch in batches:
        input_ids = torch.tensor(batch, dtype=torch.long, device=device)  # (B, T)
        logits = model(input_ids=input_ids).logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1), reduction="none"
        )
        nll += float(losses.double().sum())
        count += losses.numel()
    return Perplexity(nll_sum=nll, tokens=count)


@dataclass(frozen=True)
class QAItem:
    """A text question and its accepted answers."""

    question: str
    answers: tuple[str, ...]


def load_qa(path: str | Path) -> list[QAItem]:
    """Read JSONL lines {"question": str, "answer": str or [str, ...]}; malformed lines (and empty files) raise
    DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError('the QA file does not exist; pass a JSONL file of {"question", "answer"} lines', path)
    items = []
    for number, row in iter_jsonl(path):
        if not isinstance(row.get("question"), str):
            raise DataError('need {"question": str, "answer": str or a list of str}', path, number)
        answers = [row["answer"]] if isinstance(row.get("answer"), str) else row.get("answer")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError('"answer" must be a string or a non-empty list of strings', path, number)
        items.append(QAItem(row["question"], tuple(answers)))
    return items


def answer_questions(
    model: Any, processor: Any, items: Sequence[QAItem], *, prompt: str, batch_size: int, max_new_tokens: int
) -> list[str]:
    """Greedy answers, each question asked in the model's chat template ("chat", the first sentence of each reply
    kept) or as bare text ("raw": `Question: ...\nAnswer:`, the first line of each reply kept)."""
    if prompt not in QA_PROMPTS:
        raise ConfigError(f"qa prompt {prompt!r} is unknown; choose one of {', '.join(QA_PROMPTS)}")
    answers = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        texts = [f"Question: {item.question}\nAnswer:" for item in batch] if prompt == "raw" else []
        if prompt == "chat":
            try:
                texts = [processor.apply_chat_template([{"role": "user", "content": i.question}]) for i in batch]
            except ConfigError as err:
                raise ConfigError(f"{err}; or ask the questions as bare text with --qa-prompt raw") from err
        inputs = processor(text=texts, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1] :]
        decoded = [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
        answers += [first_sentence(text) if prompt == "chat" else first_line(text) for text in decoded]
    return answers


def first_sentence(text: str) -> str:
    """A chat reply's first sentence (up to a full stop, "!" or "?" followed by a space, or a line end), stripped:
    what is scored, so that a right answer named later in a rambling reply ("... is Neptune, but ... Jupiter")
    does not count."""
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()


def first_line(text: str) -> str:
    """The answer in a bare-text completion: its first line, stripped. A "Question: ...\nAnswer:" prompt has no end
    of turn to stop at, so the model writes on past the answer (often the next "Question:") until max_new_tokens."""
    return text.strip().split("\n", 1)[0].strip()


def relative_difference(model_value: float, base_value: float) -> float | None:
    """(model - base) / base; 0 when equal, None when the base is 0 and the model is not."""
    if model_value == base_value:
        return 0.0
    return None if base_value == 0 else (model_value - base_value) / base_value


def within(difference: float | None, tolerance: float) -> bool:
    """The verdict: |relative difference| <= tolerance (an undefined difference fails)."""
    return difference is not None and abs(difference) <= tolerance


@dataclass(frozen=True)
class LoadMemory:
    """Memory of loading one deployment in a fresh process: resident memory the load added, the process's peak
    resident set, and the bytes of the loaded parameters (all MiB)."""

    load_rss_mb: float
    peak_rss_mb: float
    param_mb: float


def load_memory(arguments: dict[str, Any]) -> dict[str, float]:
    """Fresh-process entry: load `path` (with `vision` or not, in the dtype named `dtype`, quantised when `quantize`
    names a quantisation) and return its LoadMemory."""
    from vlbridge.model.io import load_weights, quantize_model, read_config
    from vlbridge.model.vlm import VisionLanguageModel

    path = Path(arguments["path"])
    before = status_kib("VmRSS")
    config, rules = read_config(path)
    model = VisionLanguageModel(config, vision=arguments["vision"]).to(resolve_dtype(arguments["dtype"]))
    load_weights(model, path, rules)
    if arguments.get("quantize"):
        quantize_model(model, arguments["quantize"])
    gc.collect()
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return asdict(LoadMemory((status_kib("VmRSS") - before) / 1024, status_kib("VmHWM") / 1024, params))


def deployment_memory(path: str | Path, dtype: str = "float32", quantize: str | None = None) -> dict[str, LoadMemory]:
    """{"full": ..., "text_only": ...}: the checkpoint loaded with and without vision (quantised with `quantize`),
    each in its own fresh process (run side by side), so nothing one load allocated is counted in the other. `dtype`
    is a name from `vlbridge.dtypes`; an unknown one fails here, before any process starts."""
    resolve_dtype(dtype)
    loads = {"full": True, "text_only": False}
    arguments = {"path": str(path), "dtype": dtype, "quantize": quantize}
    results = run_isolated(
        {
            name: ("vlbridge.eval.retention:load_memory", {**arguments, "vision": vision})
            for name, vision in loads.items()
        }
    )
    return {name: LoadMemory(**result) for name, result in results.items()}


def memory_saving(memory: dict[str, LoadMemory]) -> dict[str, float]:
    """Fraction of each figure the text-only deployment saves against the full one."""
    full, text = asdict(memory["full"]), asdict(memory["text_only"])
    return {key: 1 - text[key] / full[key] for key in full if full[key] > 0}


def _context_length(path: str | Path) -> int:
    from vlbridge.model.io import read_config

    config, _ = read_config(Path(path))
    return config.language_model.max_position_embeddings


def _score(
    path: str | Path,
    text: str,
    length: int,
    items: list[QAItem] | None,
    settings: dict[str, Any],
    quantize: str | None = None,
) -> dict:
    """Load `path` text-only (quantised with `quantize`) and measure it: the token ids it reads, its perplexity, and
    its QA answers."""
    import vlbridge

    device, dtype = settings["device"], settings["dtype"]
    model, processor = vlbridge.load(str(path), vision=False, device=device, dtype=dtype, quantize=quantize)
    limit = model.config.language_model.max_position_embeddings
    if length > limit:
        raise ConfigError(f"the window of {length} tokens exceeds {path}'s context of {limit}; lower --window")
    tokenizer = processor.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    result: dict[str, Any] = {"ids": (tokenizer.bos_token_id, ids)}
    result["perplexity"] = perplexity(model, ids, length, tokenizer.bos_token_id, settings["batch_size"])
    if items is not None:
        result["answers"] = answer_questions(
            model,
            processor,
            items,
            prompt=settings["qa_prompt"],
            batch_size=settings["batch_size"],
            max_new_tokens=settings["max_new_tokens"],
        )
    del model, processor
    gc.collect()
    return result


def compare(
    base: str | Path,
    model: str | Path,
    data: str | Path,
    qa: str | Path | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    window: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 16,
    qa_prompt: str = "chat",
    memory: bool = True,
    dtype: str | None = None,
    device: str = "cpu",
    quantize: str | None = None,
) -> dict[str, Any]:
    """The retention report (JSON-ready) of the VLM at `model` (loaded text-only, quantised with `quantize`)
    against the base LLM at `base`.

    The two are loaded one after the other, so only one model is in memory at a time.
    """
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0 (a fraction: 0.03 = 3%), got {tolerance}")
    if batch_size < 1:  # slicing by a negative step would silently leave windows and questions out
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if window is not None and window < 2:  # 0 would silently mean "the context length"
        raise ConfigError(f"--window must be at least 2 tokens, got {window}; leave it out for the context length")
    data = Path(data)
    if not data.is_file():
        raise DataError("the held-out text file does not exist; pass a plain-text file", data)
    text = read_text(data)
    items = load_qa(qa) if qa is not None else None
    length = window if window is not None else min(_context_length(base), _context_length(model))
    settings = {"device": device, "dtype": dtype, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    settings["qa_prompt"] = qa_prompt
    scored = {
        "base": _score(base, text, length, items, settings),
        "model": _score(model, text, length, items, settings, quantize),
    }
    if scored["base"]["ids"] != scored["model"]["ids"]:
        raise ConfigError(
            f"{base} and {model} tokenize the held-out text differently; perplexities over different tokens are not "
            "comparable: give the VLM the base LLM's tokenizer"
        )
    ppl = {role: scored[role]["perplexity"] for role in scored}
    difference = relative_difference(ppl["model"].ppl, ppl["base"].ppl)
    report: dict[str, Any] = {
        "base": str(base),
        "model": str(model),
        "data": str(data),
        "quantize": quantize,
        "tolerance": tolerance,
        "window": length,
        "perplexity": {
            **{role: {"ppl": p.ppl, "nll_sum": p.nll_sum, "tokens": p.tokens} for role, p in ppl.items()},
            "relative_difference": difference,
            "within_tolerance": within(difference, tolerance),
        },
    }
    if items is not None:
        report["qa"] = _qa_section(items, scored["base"]["answers"], scored["model"]["answers"], tolerance)
        report["qa"]["file"] = str(qa)
    if memory:
        measured = deployment_memory(model, dtype or "float32", quantize)
        report["memory"] = {name: asdict(m) for name, m in measured.items()}
        report["memory"]["text_only_saving"] = memory_saving(measured)
    verdicts = [report["perplexity"]["within_tolerance"]] + ([report["qa"]["within_tolerance"]] if items else [])
    report["retained"] = all(verdicts)
    return report


def _qa_section(items: list[QAItem], base: list[str], model: list[str], tolerance: float) -> dict[str, Any]:
    """Accuracy of both, their relative difference and verdict, and every answer for inspection."""
    scores = {
        role: [
            max(contains_answer(answer, gold) for gold in item.answers) for item, answer in zip(items, got, strict=True)
        ]
        for role, got in (("base", base), ("model", model))
    }
    accuracy = {role: sum(s) / len(s) for role, s in scores.items()}
    difference = relative_difference(accuracy["model"], accuracy["base"])
    return {
        "n": len(items),
        "metric": "an accepted answer appears in the reply (first sentence; first line for raw prompts), whole words",
        "accuracy": accuracy,
        "relative_difference": difference,
        "within_tolerance": within(difference, tolerance),
        "answers": [
            {"question": item.question, "answers": list(item.answers), "base": b, "model": m}
            for item, b, m in zip(items, base, model, strict=True)
        ],
    }
