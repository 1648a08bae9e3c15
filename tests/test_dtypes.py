"""Dtype names: one table behind every flag and API that takes one; unknown names list the accepted ones."""

from __future__ import annotations

import argparse

import pytest
import torch

import vlbridge
from vlbridge.bench.flops import analyze
from vlbridge.bench.token_budget import KV_DTYPE_BYTES
from vlbridge.cli import retention
from vlbridge.cli.main import build_parser
from vlbridge.config import ModelConfig
from vlbridge.dtypes import DTYPE_CHOICES, DTYPES, resolve_dtype
from vlbridge.errors import ConfigError
from vlbridge.eval.retention import deployment_memory


def test_short_and_torch_names_name_the_same_types() -> None:
    assert DTYPE_CHOICES == ("fp32", "bf16", "fp16")
    assert list(DTYPES) == ["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]
    for short, full in zip(DTYPE_CHOICES, ("float32", "bfloat16", "float16"), strict=True):
        assert resolve_dtype(short) is resolve_dtype(full) is getattr(torch, full)
    assert resolve_dtype(torch.float16) is torch.float16  # a torch dtype is taken as it is


@pytest.mark.parametrize(
    "call",
    [
        lambda: resolve_dtype("fp64"),
        lambda: vlbridge.load(dtype="fp64"),  # before any weight is read
        lambda: deployment_memory("unused", dtype="fp64"),  # before any process starts
        lambda: analyze(ModelConfig(), kv_dtype="fp64"),
    ],
    ids=["resolve", "load", "deployment_memory", "flops"],
)
def test_unknown_names_list_the_accepted_ones(call) -> None:
    with pytest.raises(
        ConfigError, match="unknown dtype 'fp64'; use one of fp32, bf16, fp16, float32, bfloat16, float16"
    ):
        call()


def test_dtype_flags_offer_the_table_s_short_names() -> None:
    retention_parser = argparse.ArgumentParser()
    retention.add_arguments(retention_parser)
    parsers = {
        "chat": lambda extra: build_parser().parse_args(["chat", *extra]),
        "eval": lambda extra: build_parser().parse_args(["eval", *extra]),
        "text-retention": lambda extra: retention_parser.parse_args(
            ["--base", "b", "--model", "m", "--data", "d", *extra]
        ),
    }
    for name, parse in parsers.items():
        assert [parse(["--dtype", choice]).dtype for choice in DTYPE_CHOICES] == list(DTYPE_CHOICES), name
        with pytest.raises(SystemExit):
            parse(["--dtype", "fp64"])


def test_kv_cache_bytes_derive_from_the_table() -> None:
    assert KV_DTYPE_BYTES == {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
