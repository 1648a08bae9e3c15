"""A live server for the serving tests: the embedded default behind uvicorn on 127.0.0.1, in a thread."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import vlbridge
from vlbridge.model.io import default_model_dir
from vlbridge.serve.app import ServerState
from vlbridge.serve.auth import KeyStore
from vlbridge.serve.background import background_server
from vlbridge.serve.engine import Engine
from vlbridge.serve.limits import Limits

SAMPLE = default_model_dir() / "sample.png"


def sample_data_url() -> str:
    """The embedded sample image as a base64 PNG data URL."""
    return "data:image/png;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()


@contextmanager
def live_server(
    vision: bool = True,
    keys: KeyStore | None = None,
    limits: Limits | None = None,
    max_batch: int = 8,
    media: Path | None = None,
) -> Iterator[str]:
    """Yield the base URL of a running server; stop it (and drain its engine) afterwards."""
    model, _ = vlbridge.load(vision=vision)
    limits = limits or Limits()
    engine = Engine(model, max_batch=max_batch, max_queue=limits.max_queue).start()
    with background_server(ServerState(engine, "vlbridge-default", limits, keys, media)) as url:
        yield url
