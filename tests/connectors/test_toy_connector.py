"""A new connector costs one file: the toy connector (toy_connector.py, beside this test) and its recipe (toy.yaml)
train for two steps through `vlbridge train`, and the checkpoint it writes holds the toy, trained, and loads with it.

The module is imported as a user's own script imports it before running the CLI (docs/adding-a-connector.md); the
registration it makes is undone after each test, so the rest of the suite sees only the built-in connectors.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

import vlbridge
from vlbridge.cli.main import main as vlbridge_cli
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import CONNECTORS, ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer

HERE = Path(__file__).parent
CONTEXT = ConnectorContext(6, LMConfig(hidden_size=8), DecoderLayer)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """tests/connectors/toy_connector.py, imported (so registered) for one test, with one torch thread."""
    monkeypatch.setattr(CONNECTORS, "_items", dict(CONNECTORS._items))  # the registry has no removal: restore a copy
    spec = importlib.util.spec_from_file_location("toy_connector", HERE / "toy_connector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a busy 2-core machine makes a second thread crawl
    yield module
    torch.set_num_threads(threads)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("n_patches", [1, 9, 10])
def test_num_tokens_matches_the_output(toy: ModuleType, stride: int, n_patches: int) -> None:
    connector = build_connector(ConnectorConfig(name="toy", options={"stride": stride}), CONTEXT)
    out = connector(torch.randn(2, n_patches, 6))
    assert out.shape == (2, connector.num_tokens(n_patches), 8)


def test_its_options_are_read_like_a_built_in_connector(toy: ModuleType) -> None:
    assert "toy" in vlbridge.connectors.available()
    assert build_connector(ConnectorConfig(name="toy"), CONTEXT).options == toy.ToyOptions(stride=2)
    with pytest.raises(ConfigError, match=r"connector 'toy' has no option\(s\) strides; its options are: stride: int"):
        build_connector(ConnectorConfig(name="toy", options={"strides": 2}), CONTEXT)
    with pytest.raises(ConfigError, match=r"connector 'toy': connector\.options\.stride: expected int, got str '2'"):
        build_connector(ConnectorConfig(name="toy", options={"stride": "2"}), CONTEXT)
    with pytest.raises(ConfigError, match=r"connector\.options\.stride must be >= 1, got 0"):
        build_connector(ConnectorConfig(name="toy", options={"stride": 0}), CONTEXT)


def test_vlbridge_train_trains_it_from_its_yaml(toy: ModuleType, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--config", str(HERE / "toy.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    assert vlbridge_cli([*argv, "--run-dir", str(run)]) == 0

    weights = load_file(run / "model.safetensors")
    assert {k for k in weights if k.startswith("connector.")} == {
        "connector.gain",
        "connector.proj.weight",
        "connector.proj.bias",
    }
    gain = weights["connector.gain"]
    assert not torch.equal(gain, torch.ones_like(gain)), "the toy's forward never reached the loss"

    model, processor = vlbridge.load(run)
    assert isinstance(model.connector, toy.ToyConnector) and model.connector.options == toy.ToyOptions(stride=2)
    image = next((tmp_path / "data").glob("**/*.png"))
    inputs = processor(text="<image>\nWhat is it?", images=[image], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.connector.num_tokens(9) == 5
    with torch.no_grad():
        assert model(**inputs).logits.isfinite().all()
