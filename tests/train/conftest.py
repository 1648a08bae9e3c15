"""Fixtures for the trainer tests: one tiny synthetic dataset and tokenizer per session, tiny models per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny_run

from vlbridge.config import ModelConfig, from_dict
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.pipeline import fit_config


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's waiting makes each
    step up to 100x slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 rendered scenes (48 px) with captions and instructions."""
    return tiny_run.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320-token BPE tokenizer trained on the tiny dataset."""
    return tiny_run.make_tokenizer(tiny_data, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_tokenizer_dir)


@pytest.fixture
def tiny_model(tiny_tokenizer: Tokenizer) -> VisionLanguageModel:
    """A freshly initialised (seed 0) tiny VLM fitted to the tokenizer."""
    torch.manual_seed(0)
    config = fit_config(from_dict(ModelConfig, tiny_run.TINY_MODEL), tiny_tokenizer, "chatml")
    return VisionLanguageModel(config)
