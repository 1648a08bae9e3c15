"""The continuous-batching engine: a request's greedy output is the same alone, inside a batch, and from
model.generate; rows are reused; a cancelled request leaves at once; a bad request does not stop the engine.
Connectors that keep per-request decode state (gated_xattn's cross-attention hooks, mini's pre-fusion cache) are
served too: their image requests decode alone beside the batch, and a greedy reply still equals model.generate's,
alone, among other requests, streamed and not."""

from __future__ import annotations

import base64
import dataclasses
import io
import threading

import openai
import PIL.Image
import pytest
import torch

import vlbridge
from hf_fixtures import random_image
from serving import sample_data_url
from vlbridge.errors import ModalityError
from vlbridge.model.io import default_model_dir
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.serve.app import ServerState, _prepare
from vlbridge.serve.background import background_server
from vlbridge.serve.engine import Engine, EngineRequest, Event, QueueFullError, RequestTimeoutError
from vlbridge.serve.schemas import parse_chat_request

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


CONNECTORS = {
    "mini": {"prefusion_layers": 2},
    "gated_xattn": {"num_latents": 3, "depth": 1, "num_heads": 2, "head_dim": 8, "ff_mult": 2},
}


@pytest.fixture(scope="module", params=sorted(CONNECTORS))
def stateful_model(request) -> VisionLanguageModel:
    """The embedded default's sizes and tokenizer with a freshly initialised `mini` or `gated_xattn` connector; the
    cross-attention gates opened (they start at 0, where the images change nothing)."""
    default = vlbridge.load()[0]
    connector = dataclasses.replace(default.config.connector, name=request.param, options=CONNECTORS[request.param])
    torch.manual_seed(0)
    model = VisionLanguageModel(
        dataclasses.replace(default.config, connector=connector), tokenizer=default.processor.tokenizer
    )
    with torch.no_grad():
        for name, param in model.connector.named_parameters():
            if name.endswith("_gate"):
                param.fill_(0.5)
    return model.eval()


def _expected(model: VisionLanguageModel, inputs: dict, n: int) -> str:
    ids = model.generate(**inputs, max_new_tokens=n, eos_token_id=(), stop_strings=())
    return model.processor.decode(ids[0, inputs["input_ids"].shape[1] :])


def test_image_requests_decode_alone_equal_generate_alone_and_in_a_crowd(stateful_model) -> None:
    model = stateful_model
    lengths = (30, 12, 21, 8)
    requests = []
    for i, n in enumerate(lengths):  # image requests decode alone, text-only ones in the batch
        config = model.generation_config(max_new_tokens=n, eos_token_id=(), stop_strings=())
        requests.append((_inputs(model, QUESTIONS[i], image=i != 1), config))
    engine = Engine(model, max_batch=3).start()
    try:
        alone = [_run(engine, [r])[0] for r in requests]
        crowd = _run(engine, requests * 2)  # 8 requests over 3 places: they wait, join and leave mid-way
    finally:
        engine.stop()
    for i, (inputs, config) in enumerate(requests):
        expected = _expected(model, inputs, config.max_new_tokens)
        assert _text(alone[i]) == expected
        assert _text(crowd[i]) == expected and _text(crowd[i + len(requests)]) == expected
        assert alone[i][-1].finish_reason == "length" and alone[i][-1].completion_tokens == config.max_new_tokens
        assert alone[i][-1].prompt_tokens == inputs["input_ids"].shape[1]
    assert engine.running == 0 and engine.queue_length == 0


def test_served_image_reply_equals_generate_streamed_and_not(stateful_model) -> None:
    model = stateful_model
    engine = Engine(model, max_batch=4).start()
    state = ServerState(engine, "tiny")
    parts = [{"type": "image_url", "image_url": {"url": sample_data_url()}}, {"type": "text", "text": "Describe it."}]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": 16}
    request = _prepare(state, parse_chat_request(body, model.config.image_token))
    ids = model.generate(request.input_ids, pixel_values=request.pixel_values, **dataclasses.asdict(request.config))
    new = ids[0, request.input_ids.shape[1] :].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in request.config.eos_token_id), len(new))]
    expected = model.processor.decode(new)
    for stop in request.config.stop_strings:  # the server cuts a stop string out of the reply
        expected = expected.split(stop)[0]
    with background_server(state) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(**body)
        chunks = list(client.chat.completions.create(**body, stream=True))
    assert reply.choices[0].message.content == expected
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert reply.usage.prompt_tokens == request.input_ids.shape[1] and 0 < reply.usage.completion_tokens <= 16


def test_a_request_decoding_alone_is_cancelled_and_timed_out_like_a_batched_one(stateful_model) -> None:
    model = stateful_model
    inputs = _inputs(model, "Describe it.", image=True)
    engine = Engine(model, max_batch=1).start()
    try:
        config = model.generation_config(max_new_tokens=100, eos_token_id=(), stop_strings=())
        first = threading.Event()
        long = EngineRequest(inputs["input_ids"], inputs["pixel_values"], config, lambda e: first.set())
        engine.submit(long)
        assert first.wait(60)
        long.cancelled.set()  # the client went away: its place must go to the next request
        short = model.generation_config(max_new_tokens=3, eos_token_id=(), stop_strings=())
        (events,) = _run(engine, [(inputs, short)])
        assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 3
        done = threading.Event()
        timed: list[Event] = []

        def emit(event: Event) -> None:
            timed.append(event)
            if event.last:
                done.set()

        engine.submit(EngineRequest(inputs["input_ids"], inputs["pixel_values"], config, emit, timeout_s=1e-6))
        assert done.wait(60)
        assert isinstance(timed[-1].error, RequestTimeoutError) and "after 1 tokens" in str(timed[-1].error)
        assert engine.running == 0
    finally:
        engine.stop()


def test_served_replies_never_hold_the_image_token(model) -> None:
    """The engine's greedy fast path skips a suppressed token as generate does: with a head that prefers the image
    token, the served reply equals generate's, which never holds it."""
    image_token = model.config.image_token_id

    def prefer_the_image_token(module: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_add(-1, torch.tensor([image_token]), torch.full((*logits.shape[:-1], 1), 100.0))

    hook = model.language_model.lm_head.register_forward_hook(prefer_the_image_token)
    engine = Engine(model, max_batch=2).start()
    try:
        inputs = _inputs(model, QUESTIONS[0], image=False)
        config = model.generation_config(max_new_tokens=6, eos_token_id=(), stop_strings=())
        served = _text(_run(engine, [(inputs, config)])[0])
        ids = model.generate(**inputs, max_new_tokens=6, eos_token_id=(), stop_strings=())[0]
    finally:
        engine.stop()
        hook.remove()
    assert image_token not in ids[inputs["input_ids"].shape[1] :].tolist()
    assert served == model.processor.decode(ids[inputs["input_ids"].shape[1] :])


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_served_anyres_image_reply_equals_generate(llava_next_dir) -> None:
    """An AnyRes (llava_next) model is served with each image's size, as generate takes it: the reply is generate's."""
    model, processor = vlbridge.load(llava_next_dir)
    processor.chat_template = "{% for m in messages %}USER: {{ m['content'] }} ASSISTANT:{% endfor %}"
    engine = Engine(model, max_batch=2).start()
    state = ServerState(engine, "tiny-next")
    image = "data:image/png;base64," + base64.b64encode(_png(random_image(3, (45, 31)))).decode()
    parts = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "what colour?"}]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": 8}
    try:
        request = _prepare(state, parse_chat_request(body, model.config.image_token))
        assert request.image_sizes is not None and request.image_sizes.tolist() == [[31, 45]]
        config = dataclasses.replace(request.config, eos_token_id=(), stop_strings=())
        expected = model.generate(
            request.input_ids,
            pixel_values=request.pixel_values,
            image_sizes=request.image_sizes,
            **dataclasses.asdict(config),
        )[0, request.input_ids.shape[1] :].tolist()
        events: list[Event] = []
        done = threading.Event()
        engine.submit(
            dataclasses.replace(request, config=config, emit=lambda e: (events.append(e), e.last and done.set()))
        )
        assert done.wait(60)
    finally:
        engine.stop()
    assert events[-1].error is None and events[-1].completion_tokens == 8
    assert _text(events) == processor.decode(expected)
