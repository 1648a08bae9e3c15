"""Load: 50 concurrent clients x 4 requests against the embedded default: no 5xx, every greedy answer equal to the
same request sent alone, and resident memory bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from serving import live_server, sample_data_url

QUESTIONS = ["What shape is top right?", "How many shapes are there?", "Describe the image.", "What color is it?"]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _body(i: int) -> dict:
    content: list[dict] = [{"type": "text", "text": QUESTIONS[i % 4]}]
    if i % 2 == 0:
        content.insert(0, {"type": "image_url", "image_url": {"url": sample_data_url()}})
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 24}


@pytest.mark.slow
def test_fifty_clients_four_requests_each() -> None:
    with live_server(max_batch=16) as url:

        async def post(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
            response = await client.post("/v1/chat/completions", json=_body(i))
            text = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else ""
            return response.status_code, text

        async def alone() -> list[str]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                return [(await post(client, i))[1] for i in range(8)]

        async def crowd() -> list[tuple[int, int, str]]:
            async def client_run(c: int) -> list[tuple[int, int, str]]:
                async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                    return [(c * 4 + k, *(await post(client, c * 4 + k))) for k in range(4)]

            runs = await asyncio.gather(*(client_run(c) for c in range(50)))
            return [row for run in runs for row in run]

        expected = asyncio.run(alone())
        before = _rss_mb()
        results = asyncio.run(crowd())
        grown = _rss_mb() - before
    assert len(results) == 200
    assert [status for _, status, _ in results if status >= 500] == []
    assert all(status == 200 for _, status, _ in results)
    assert all(text == expected[i % 8] for i, _, text in results)
    assert grown < 300, f"resident memory grew {grown:.0f} MB over 200 requests"
