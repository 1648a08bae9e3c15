"""A live server for the serving tests: uvicorn on 127.0.0.1 at a free port, in a thread, over the embedded default."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

import vlbridge
from vlbridge.model.io import default_model_dir
from vlbridge.serve.app import ServerState, create_app
from vlbridge.serve.auth import KeyStore
from vlbridge.serve.engine import Engine
from vlbridge.serve.limits import Limits

SAMPLE = default_model_dir() / "sample.png"


def sample_data_url() -> str:
    """The embedded sample image as a base64 PNG data URL."""
    return "data:image/png;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    state = ServerState(engine, "vlbridge-default", limits, keys, media)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        engine.stop(30)
