"""The server through the real `openai` client and plain HTTP: completions with an image as a data URL, streamed and
not, usage, and every error status in OpenAI's shape."""

from __future__ import annotations

import httpx
import openai
import pytest

from serving import live_server, sample_data_url
from vlbridge.serve.auth import APIKey, KeyStore
from vlbridge.serve.engine import Engine, QueueFullError
from vlbridge.serve.limits import Limits

FULL, TEXT = "key-full-0123456789", "key-text-0123456789"
KEYS = KeyStore([APIKey(FULL, "full", frozenset({"text", "image"})), APIKey(TEXT, "textonly", frozenset({"text"}))])


def _image_message(question: str = "What shape is top right?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": sample_data_url()}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def server():
    with live_server(keys=KEYS, limits=Limits(max_images=2, max_body_bytes=2**20)) as url:
        yield url


def _client(url: str, key: str = FULL) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_completion_with_image_matches_stream_and_counts_visual_tokens(server) -> None:
    client = _client(server)
    reply = client.chat.completions.create(model="m", messages=_image_message(), temperature=0, max_tokens=24)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 9  # the sample's 9 visual tokens plus the question
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=_image_message(),
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == text


def test_two_images_and_text_only_question(server) -> None:
    client = _client(server)
    parts = [{"type": "image_url", "image_url": {"url": sample_data_url()}} for _ in range(2)]
    one = client.chat.completions.create(model="m", messages=_image_message(), temperature=0, max_tokens=4)
    two = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": [*parts, {"type": "text", "text": "Same?"}]}],
        temperature=0,
        max_tokens=4,
    )
    assert two.usage.prompt_tokens > one.usage.prompt_tokens
    text = _client(server, TEXT).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
    )
    assert text.usage.completion_tokens >= 1


def _expect(err: type[openai.APIStatusError], status: int, kind: str, call) -> dict:
    with pytest.raises(err) as caught:
        call()
    assert caught.value.status_code == status
    body = caught.value.response.json()["error"]
    assert body["type"] == kind and set(body) == {"message", "type", "param", "code"}
    return body


def test_error_statuses_in_openai_shape(server) -> None:
    def ask(key: str = FULL, **fields):
        return _client(server, key).chat.completions.create(
            model="m", **{"messages": _image_message(), "max_tokens": 4, **fields}
        )

    _expect(openai.AuthenticationError, 401, "authentication_error", lambda: ask("wrong-key-0123456789"))
    body = _expect(openai.PermissionDeniedError, 403, "permission_error", lambda: ask(TEXT))
    assert "may not send images" in body["message"]
    body = _expect(openai.BadRequestError, 400, "invalid_request_error", lambda: ask(n=2))
    assert body["param"] == "n"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    _expect(openai.BadRequestError, 400, "invalid_request_error", lambda: ask(tools=tools))
    body = _expect(openai.BadRequestError, 400, "invalid_request_error", lambda: ask(max_tokens=100000))
    assert (
        body["code"] == "context_length_exceeded" and "100000" in body["message"] and "> the context" in body["message"]
    )
    http = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]
    body = _expect(openai.BadRequestError, 400, "invalid_request_error", lambda: ask(messages=http))
    assert "network" in body["message"]
    broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    _expect(openai.BadRequestError, 400, "invalid_request_error", lambda: ask(messages=broken))
    three = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": sample_data_url()}}] * 3}]
    _expect(openai.BadRequestError, 400, "invalid_request_error", lambda: ask(messages=three))
    # the server is still up and answers after every refusal
    assert ask(temperature=0).choices[0].message.content is not None


def test_plain_http_routes(server) -> None:
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    assert httpx.get(server + "/v1/models").status_code == 401
    models = httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {FULL}"}).json()
    assert models["data"][0]["modalities"] == ["text", "image", "video"]
    missing = httpx.get(server + "/v1/nothing")
    assert missing.status_code == 404
    big = httpx.post(
        server + "/v1/chat/completions", content=b"x" * (2**20 + 1), headers={"Authorization": f"Bearer {FULL}"}
    )
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    chunked = httpx.post(
        server + "/v1/chat/completions", content=iter([b"x" * 2**19] * 3), headers={"Authorization": f"Bearer {FULL}"}
    )
    assert chunked.status_code == 413  # no Content-Length: the body is measured as it is read
    bad = httpx.post(server + "/v1/chat/completions", content=b"{", headers={"Authorization": f"Bearer {FULL}"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    metrics = httpx.get(server + "/metrics").text
    assert "vlbridge_queue_length" in metrics and 'vlbridge_requests_total{status="401"}' in metrics
    assert "vlbridge chat" in httpx.get(server + "/").text


def test_text_only_deployment_refuses_images_and_busy_server_says_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    with live_server(vision=False, limits=Limits(max_queue=1), max_batch=1) as url:
        client = _client(url, "no-keys")
        body = _expect(
            openai.PermissionDeniedError,
            403,
            "permission_error",
            lambda: client.chat.completions.create(model="m", messages=_image_message(), max_tokens=2),
        )
        assert "text-only" in body["message"]
        models = httpx.get(url + "/v1/models").json()
        assert models["data"][0]["modalities"] == ["text"]

        def full(self: Engine, request: object) -> None:  # the engine's own queue limit: tests/serve/test_engine.py
            raise QueueFullError("1 requests are already waiting (the queue limit)")

        monkeypatch.setattr(Engine, "submit", full)
        for stream in (False, True):
            busy = httpx.post(
                url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": stream},
                timeout=60,
            )
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "server_busy" and "queue limit" in busy.json()["error"]["message"]
