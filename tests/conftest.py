"""Shared fixtures: tiny HF llava checkpoints written once per test session."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hf_fixtures import tiny_llava, tiny_llava_next


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C handled as Python does by default, even when the suite was started in the background of a script (which
    starts it with SIGINT ignored): the `vlbridge` processes the Ctrl-C tests start inherit an ignored SIGINT, never a
    handled one, so without this they would ignore the SIGINT the tests send."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def clip_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP-tower llava-hf checkpoint with untied embeddings."""
    return tiny_llava(tmp_path_factory.mktemp("clip_llava"), family="clip", tie=False)


@pytest.fixture(scope="session")
def siglip_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SigLIP-tower llava-hf checkpoint with tied embeddings and the `full` select strategy."""
    return tiny_llava(tmp_path_factory.mktemp("siglip_llava"), family="siglip", tie=True, seed=1)


@pytest.fixture(scope="session")
def llava_next_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llava_next-hf checkpoint (AnyRes, 32 px tiles) with weights under the names save_pretrained writes."""
    return tiny_llava_next(tmp_path_factory.mktemp("llava_next"))


@pytest.fixture(scope="session")
def llava_next_module_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of checkpoint with weights under transformers >= 4.52's module names (`model.language_model.*`)."""
    return tiny_llava_next(tmp_path_factory.mktemp("llava_next_modules"), module_keys=True, seed=3)


@pytest.fixture(autouse=True)
def _file_hash_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's file-hash cache (vlbridge.model.file_hash) lives in a temporary folder, never in the real home."""
    folder = tmp_path_factory.mktemp("file-hash-cache")
    monkeypatch.setenv("VLBRIDGE_CACHE_DIR", str(folder))
    return folder
