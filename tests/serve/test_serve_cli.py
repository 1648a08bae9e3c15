"""`vlbridge serve` as a process: a keys file, one access-log line per request without keys or image bytes, and
SIGTERM draining the request in flight before the process exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving import sample_data_url
from vlbridge.serve.background import free_port

KEY = "cli-key-0123456789"


def test_serve_process_logs_and_drains_on_sigterm(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": KEY, "name": "alice", "modalities": ["text", "image"]}]}))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    command = [sys.executable, "-m", "vlbridge", "serve", "--port", str(port), "--api-keys", str(keys)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not come up"
            time.sleep(0.2)
        parts = [{"type": "image_url", "image_url": {"url": sample_data_url()}}, {"type": "text", "text": "Describe."}]
        body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 60, "temperature": 0, "stream": True}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            server.send_signal(signal.SIGTERM)  # the request in flight must still finish
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
        assert server.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught after draining
    finally:
        if server.poll() is None:
            server.kill()
        log = server.stderr.read() if server.stderr else ""
    access = [line for line in log.splitlines() if "vlbridge.serve.access" in line]
    assert any("GET /health 200" in line for line in access)
    assert any("POST /v1/chat/completions 200" in line and "key=alice" in line for line in access)
    assert KEY not in log and "base64" not in log
