"""The Generator: greedy/sampling semantics, logits processing, EOS padding, stop strings, streaming, batches."""

from __future__ import annotations

import pytest
import torch

from vlbridge.config import LMConfig
from vlbridge.errors import ConfigError, PromptError
from vlbridge.lm import DecoderLM, KVCache
from vlbridge.model.generate import (
    GenerationConfig,
    Generator,
    apply_repetition_penalty,
    choose_tokens,
    filter_top_k,
    filter_top_p,
)

V = 16
LETTERS = "abcdefghijklmnop"


class Scripted:
    """A StepModel whose next-token logits depend only on the last token: `table[last]` (V, V)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.seen_masks: list[torch.Tensor] = []

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        return KVCache(1, batch_size, max_length, 1, 1, torch.float32, "cpu")

    def prefill(self, cache: KVCache, attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        cache.advance(input_ids.shape[1])
        return self.table[input_ids[:, -1]]

    def decode_step(self, cache: KVCache, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert attention_mask.shape == (token_ids.shape[0], cache.length + 1)
        self.seen_masks.append(attention_mask.clone())
        cache.advance(1)
        return self.table[token_ids[:, 0]]


def chain() -> Scripted:
    """Token i is followed by i + 1 (mod V)."""
    table = torch.zeros(V, V)
    table[torch.arange(V), (torch.arange(V) + 1) % V] = 5.0
    return Scripted(table)


def _ones(ids: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(ids)


@pytest.fixture(scope="module")
def lm() -> DecoderLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = DecoderLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    return model


def test_greedy_is_deterministic_and_equals_uncached_argmax(lm: DecoderLM) -> None:
    ids = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(max_new_tokens=8)
    out = Generator(lm).generate(_ones(ids), config, ids)
    assert torch.equal(out, Generator(lm).generate(_ones(ids), config, ids))
    seq = ids
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, lm(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_seeded_sampling_is_reproducible(lm: DecoderLM) -> None:
    ids = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(2))
    gen = Generator(lm)
    runs = [
        gen.generate(_ones(ids), GenerationConfig(max_new_tokens=16, do_sample=True, seed=s), ids) for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("sampling", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, temperature=3.0)])
def test_degenerate_sampling_equals_greedy(lm: DecoderLM, sampling: dict) -> None:
    ids = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(3))
    greedy = Generator(lm).generate(_ones(ids), GenerationConfig(max_new_tokens=10), ids)
    sampled = GenerationConfig(max_new_tokens=10, do_sample=True, seed=0, **sampling)
    assert torch.equal(Generator(lm).generate(_ones(ids), sampled, ids), greedy)


def test_repetition_penalty_formula() -> None:
    logits = torch.tensor([[2.0, -1.0, 3.0, -4.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 3.0, -4.0]]))


@pytest.mark.parametrize("favourite, runner_up", [(2.0, 1.5), (-1.0, -1.5)])
def test_repetition_penalty_demotes_a_repeated_token(favourite: float, runner_up: float) -> None:
    table = torch.full((V, V), -10.0)
    table[:, 5], table[:, 6] = favourite, runner_up
    ids = torch.tensor([[5, 0]])
    plain = Generator(Scripted(table)).generate(_ones(ids), GenerationConfig(max_new_tokens=1), ids)
    penalised = GenerationConfig(max_new_tokens=1, repetition_penalty=2.0)
    assert plain[0, -1] == 5
    assert Generator(Scripted(table)).generate(_ones(ids), penalised, ids)[0, -1] == 6
    padded, mask = torch.tensor([[5, 0]]), torch.tensor([[0, 1]])  # the 5 is padding: not penalised
    assert Generator(Scripted(table)).generate(mask, penalised, padded)[0, -1] == 5


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_p(logits, 0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_p(logits, 0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_top_p(logits, 1e-9)).tolist() == [[False, True, True, True]]


def test_finished_rows_are_padded_and_generation_stops() -> None:
    ids = torch.tensor([[0, 3], [9, 0]])
    model = chain()
    out = Generator(model).generate(
        _ones(ids), GenerationConfig(max_new_tokens=20, eos_token_id=(6,), pad_token_id=15), ids
    )
    assert out[:, 2:].tolist() == [[4, 5, 6, 15, 15, 15], [1, 2, 3, 4, 5, 6]]
    assert [m.shape[1] for m in model.seen_masks] == [3, 4, 5, 6, 7]  # one decode per new token but the last


def test_stop_strings_end_a_row_and_stay_in_the_output() -> None:
    ids = torch.tensor([[0], [7]])
    config = GenerationConfig(max_new_tokens=6, stop_strings=("de",), pad_token_id=0)
    gen = Generator(chain(), detokenize=lambda t: "".join(LETTERS[i] for i in t))
    out = gen.generate(_ones(ids), config, ids)
    assert out[:, 1:].tolist() == [[1, 2, 3, 4, 0, 0], [8, 9, 10, 11, 12, 13]]
    with pytest.raises(ConfigError, match="detokenize"):
        Generator(chain()).generate(_ones(ids), config, ids)


def test_stream_yields_the_generated_tokens(lm: DecoderLM) -> None:
    ids = torch.tensor([[0, 3], [9, 0]])
    config = GenerationConfig(max_new_tokens=20, eos_token_id=(6,), pad_token_id=15)
    stream = Generator(chain()).stream(_ones(ids), config, ids)
    steps = [next(stream)]
    assert not torch.is_inference_mode_enabled()  # the caller's code between tokens runs in its own mode
    steps += list(stream)
    assert all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, 1), Generator(chain()).generate(_ones(ids), config, ids)[:, 2:])
    ids = torch.randint(0, 40, (2, 3))
    config = GenerationConfig(max_new_tokens=7, do_sample=True, seed=3, top_p=0.9)
    streamed = torch.stack(list(Generator(lm).stream(_ones(ids), config, ids)), 1)
    assert torch.equal(streamed, Generator(lm).generate(_ones(ids), config, ids)[:, 3:])


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_left_padded_batch_equals_single_prompts(lm: DecoderLM, penalty: float) -> None:
    prompts = [torch.randint(1, 40, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 6)]
    config = GenerationConfig(max_new_tokens=10, repetition_penalty=penalty)
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    batch = Generator(lm).generate(mask, config, ids)
    for row, p in enumerate(prompts):
        single = Generator(lm).generate(_ones(p[None]), config, p[None])
        assert torch.equal(batch[row, width:], single[0, len(p) :])


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be an int, got float 2.5"),
        (dict(max_new_tokens=True), "max_new_tokens must be an int, got bool True"),
        (dict(do_sample="yes"), "do_sample must be True or False"),
        (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when sampling"),
        (dict(temperature=NAN), "temperature must be finite and >= 0"),
        (dict(do_sample=True, temperature=INF), "temperature must be finite"),
        (dict(temperature=-1.0), "temperature must be finite and >= 0"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(top_k=2.5), "top_k must be an int"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=NAN), r"top_p must be in \(0, 1\]"),
        (dict(top_p="0.9"), "top_p must be a number, got str"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be finite and > 0"),
        (dict(repetition_penalty=NAN), "repetition_penalty must be finite and > 0"),
        (dict(repetition_penalty=INF), "repetition_penalty must be finite and > 0"),
        (dict(eos_token_id=[2]), "eos_token_id must be a tuple of ids"),
        (dict(eos_token_id=(2.0,)), "eos_token_id must be a tuple of ids"),
        (dict(eos_token_id=(True,)), "eos_token_id must be a tuple of ids"),
        (dict(eos_token_id=(-1,)), "eos_token_id must be a tuple of ids"),
        (dict(pad_token_id=-1), "pad_token_id must be >= 0"),
        (dict(pad_token_id=None), "pad_token_id must be an int"),
        (dict(stop_strings=("",)), "an empty stop string"),
        (dict(stop_strings="ab"), "stop_strings must be a tuple of strings"),
        (dict(stop_strings=(3,)), "stop_strings must be a tuple of strings"),
        (dict(suppress_tokens=[2]), "suppress_tokens must be a tuple of ids"),
        (dict(suppress_tokens=(-1,)), "suppress_tokens must be a tuple of ids"),
        (dict(seed=1.5), "seed must be an int"),
        (dict(seed=-1), r"seed must be in \[0, 2\*\*64\)"),
        (dict(seed=2**64), r"seed must be in \[0, 2\*\*64\)"),
    ],
)
def test_invalid_generation_config_raises(kwargs: dict, pattern: str) -> None:
    """Every field is type- and range-checked: a bool is no int, NaN and inf are no numbers a setting can take."""
    with pytest.raises(ConfigError, match=pattern):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("max_length", "max_length .use max_new_tokens"),
        ("num_beams", "num_beams .beam search is not implemented"),
        ("min_new_tokens", "min_new_tokens .*eos_token_id=\\(\\)"),
        ("top_n", "unknown generation setting.*top_n; accepted: do_sample, eos_token_id, max_new_tokens"),
    ],
)
def test_unknown_generation_settings_name_the_accepted_ones(name: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        GenerationConfig().with_overrides(**{name: 2})


def test_overrides_take_one_id_or_string_as_a_tuple_of_one() -> None:
    config = GenerationConfig().with_overrides(eos_token_id=4, stop_strings="ab", max_new_tokens=3)
    assert (config.eos_token_id, config.stop_strings, config.max_new_tokens) == ((4,), ("ab",), 3)
    config = config.with_overrides(eos_token_id=[4, 5], stop_strings=None)
    assert (config.eos_token_id, config.stop_strings) == ((4, 5), ())


def test_suppressed_tokens_are_never_chosen() -> None:
    logits = torch.tensor([[0.0, 9.0, 5.0, 1.0], [3.0, 2.0, 1.0, 0.0]])
    assert choose_tokens(logits, None, GenerationConfig(suppress_tokens=(1,)), None).tolist() == [2, 0]
    assert choose_tokens(logits, None, GenerationConfig(), None).tolist() == [1, 0]
    sampling = GenerationConfig(do_sample=True, top_k=2, suppress_tokens=(1, 0))
    rng = torch.Generator().manual_seed(0)
    picks = {int(t) for _ in range(50) for t in choose_tokens(logits, None, sampling, rng)}
    assert picks <= {2, 3} and 2 in picks
    ids = torch.tensor([[0]])
    out = Generator(chain()).generate(_ones(ids), GenerationConfig(max_new_tokens=4, suppress_tokens=(2,)), ids)
    assert 2 not in out[0, 1:].tolist()  # the chain's next token after 1 is 2: it is skipped


def test_special_ids_outside_the_vocabulary_are_refused() -> None:
    ids = torch.tensor([[0]])
    configs = (
        GenerationConfig(eos_token_id=(3, V)),
        GenerationConfig(pad_token_id=V),
        GenerationConfig(suppress_tokens=(V,)),
    )
    for config in configs:
        with pytest.raises(ConfigError, match=f"outside the model's vocabulary of {V}"):
            Generator(chain()).generate(_ones(ids), config, ids)


@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_a_prompt_without_tokens_is_refused(mode: str) -> None:
    """Generation continues from a prompt's last token: an empty prompt, or an all-padding row, has none."""
    run = getattr(Generator(chain()), mode)
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(PromptError, match=r"prompt row\(s\) \[0\] ha(s|ve) no tokens"):
        run(empty, GenerationConfig(), empty)
    ids, mask = torch.tensor([[1, 2], [0, 0]]), torch.tensor([[1, 1], [0, 0]])
    with pytest.raises(PromptError, match=r"prompt row\(s\) \[1\]"):
        run(mask, GenerationConfig(), ids)
    with pytest.raises(PromptError, match=r"add a batch dimension"):
        run(torch.ones(3, dtype=torch.long), GenerationConfig(), torch.tensor([1, 2, 3]))
