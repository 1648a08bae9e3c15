"""The README's serving examples work as written: its curl command and its openai client script, run against a live
server (only the address changes, to the test server's free port)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from serving import live_server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
ADDRESS = "http://127.0.0.1:8000"


def _block(language: str, marker: str) -> str:
    (block,) = [b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if marker in b]
    return block


def test_readme_curl_and_openai_examples_run() -> None:
    curl = _block("shell", "curl ")
    script = _block("python", "OpenAI(")
    assert ADDRESS in curl and ADDRESS in script
    with live_server() as url:
        assert shutil.which("curl"), "the README's example needs curl"
        out = subprocess.run(
            ["bash", "-c", curl.replace(ADDRESS, url)], capture_output=True, text=True, check=True, timeout=120
        ).stdout
        reply = json.loads(out)
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1
        run = subprocess.run(
            [sys.executable, "-c", script.replace(ADDRESS, url)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
