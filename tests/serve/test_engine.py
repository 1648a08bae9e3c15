"""The continuous-batching engine: a request's greedy output is the same alone, inside a batch, and from
model.generate; rows are reused; a cancelled request leaves at once; a bad request does not stop the engine."""

from __future__ import annotations

import threading

import PIL.Image
import pytest

import vlbridge
from vlbridge.errors import ModalityError
from vlbridge.model.io import default_model_dir
from vlbridge.serve.engine import Engine, EngineRequest, Event, QueueFullError, RequestTimeoutError

QUESTIONS = ["What shape is in the image?", "What color is the circle?", "How many shapes are there?", "Describe it."]


@pytest.fixture(scope="module")
def model():
    return vlbridge.load()[0]


def _inputs(model, question: str, image: bool) -> dict:
    processor = model.processor
    content = ("<image>\n" if image else "") + question
    prompt = processor.apply_chat_template([{"role": "user", "content": content}])
    images = [PIL.Image.open(default_model_dir() / "sample.png")] if image else None
    return processor(text=prompt, images=images)


def _run(engine: Engine, requests: list[tuple[dict, object]]) -> list[list[Event]]:
    """Submit all requests at once and wait for each to end; the events each received."""
    events: list[list[Event]] = [[] for _ in requests]
    done = [threading.Event() for _ in requests]
    for i, (inputs, config) in enumerate(requests):

        def emit(event: Event, i: int = i) -> None:
            events[i].append(event)
            if event.last:
                done[i].set()

        engine.submit(EngineRequest(inputs["input_ids"], inputs.get("pixel_values"), config, emit))
    for flag in done:
        assert flag.wait(120)
    return events


def _text(events: list[Event]) -> str:
    return "".join(e.text for e in events)


def test_greedy_alone_equals_batched_equals_generate(model) -> None:
    # no EOS and no stop text: every request runs its full length, so requests of different lengths overlap,
    # join while others decode, and leave in the middle of others
    lengths = (40, 17, 55, 28, 33, 9)
    requests = []
    for i, n in enumerate(lengths):
        config = model.generation_config(max_new_tokens=n, eos_token_id=(), stop_strings=())
        requests.append((_inputs(model, QUESTIONS[i % 4], image=i % 2 == 0), config))
    engine = Engine(model, max_batch=4).start()
    try:
        alone = [_run(engine, [r])[0] for r in requests]
        batched = _run(engine, requests * 2)  # 12 requests over 4 rows: rows are reused as requests finish
    finally:
        engine.stop()
    for i, (inputs, config) in enumerate(requests):
        ids = model.generate(**inputs, max_new_tokens=config.max_new_tokens, eos_token_id=(), stop_strings=())
        expected = model.processor.decode(ids[0, inputs["input_ids"].shape[1] :])
        assert _text(alone[i]) == expected
        assert _text(batched[i]) == expected and _text(batched[i + len(requests)]) == expected
        assert alone[i][-1].finish_reason == "length"
        assert alone[i][-1].completion_tokens == config.max_new_tokens
        assert alone[i][-1].prompt_tokens == inputs["input_ids"].shape[1]
    assert engine.running == 0 and engine.queue_length == 0


def test_cancelled_request_frees_its_row(model) -> None:
    engine = Engine(model, max_batch=1).start()
    try:
        config = model.generation_config(max_new_tokens=400, eos_token_id=(), stop_strings=())
        first = threading.Event()
        long = EngineRequest(_inputs(model, "Describe it.", False)["input_ids"], None, config, lambda e: first.set())
        engine.submit(long)
        assert first.wait(60)
        long.cancelled.set()  # the client went away: the only row must be free for the next request
        short = model.generation_config(max_new_tokens=3, eos_token_id=(), stop_strings=())
        (events,) = _run(engine, [(_inputs(model, "What shape?", False), short)])
        assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 3
    finally:
        engine.stop()


def test_bad_request_errors_alone_and_engine_goes_on(model) -> None:
    text_only = vlbridge.load(vision=False)[0]
    engine = Engine(text_only, max_batch=2, max_queue=1).start()
    try:
        inputs = _inputs(model, "What shape?", image=True)  # image tokens and pixels to a model without vision
        config = text_only.generation_config(max_new_tokens=4)
        (events,) = _run(engine, [(inputs, config)])
        assert isinstance(events[-1].error, ModalityError)
        (events,) = _run(engine, [(_inputs(model, "Say hi.", image=False), config)])
        assert events[-1].error is None and events[-1].finish_reason in ("stop", "length")
    finally:
        engine.stop()


def test_queue_limit(model) -> None:
    engine = Engine(model, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    config = model.generation_config(max_new_tokens=2)
    ids = _inputs(model, "Hi", image=False)["input_ids"]
    engine.submit(EngineRequest(ids, None, config, lambda e: None))
    with pytest.raises(QueueFullError, match="queue limit"):
        engine.submit(EngineRequest(ids, None, config, lambda e: None))


def test_timeout_and_seeded_sampling(model) -> None:
    engine = Engine(model, max_batch=4).start()
    try:
        inputs = _inputs(model, "Describe it.", image=False)
        slow = model.generation_config(max_new_tokens=50, eos_token_id=(), stop_strings=())
        done = threading.Event()
        events: list[Event] = []

        def emit(event: Event) -> None:
            events.append(event)
            if event.last:
                done.set()

        engine.submit(EngineRequest(inputs["input_ids"], None, slow, emit, timeout_s=1e-6))
        assert done.wait(60)
        assert isinstance(events[-1].error, RequestTimeoutError) and "after 1 tokens" in str(events[-1].error)
        sampled = model.generation_config(
            max_new_tokens=12, do_sample=True, temperature=1.5, seed=7, eos_token_id=(), stop_strings=()
        )
        greedy = model.generation_config(max_new_tokens=20, eos_token_id=(), stop_strings=())
        alone = _run(engine, [(inputs, sampled)])[0]
        crowd = _run(engine, [(inputs, greedy), (inputs, sampled), (inputs, greedy)])
        assert _text(crowd[1]) == _text(alone)  # each request samples from its own seeded generator
    finally:
        engine.stop()
