"""Shared fixtures: tiny HF llava checkpoints written once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hf_fixtures import tiny_llava


@pytest.fixture(scope="session")
def clip_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP-tower llava-hf checkpoint with untied embeddings."""
    return tiny_llava(tmp_path_factory.mktemp("clip_llava"), family="clip", tie=False)


@pytest.fixture(scope="session")
def siglip_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SigLIP-tower llava-hf checkpoint with tied embeddings and the `full` select strategy."""
    return tiny_llava(tmp_path_factory.mktemp("siglip_llava"), family="siglip", tie=True, seed=1)
