"""Training metrics: loss.png's legend names the loss and every learning-rate schedule."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from vlbridge.train.metrics import loss_figure, plot_loss


def _rows(lrs: dict[str, list[float]]) -> list[dict]:
    steps = range(1, len(next(iter(lrs.values()))) + 1)
    return [{"step": s, "loss": 3.0 / s, "lr": {part: lr[s - 1] for part, lr in lrs.items()}} for s in steps]


def _legend(rows: list[dict]) -> list[str]:
    (legend,) = loss_figure(rows).legends
    return [text.get_text() for text in legend.get_texts()]


def test_the_legend_names_the_loss_and_each_learning_rate_schedule_once() -> None:
    rows = _rows({"connector": [1e-3, 5e-4, 0.0], "language_model": [1e-3, 5e-4, 0.0], "vision_encoder": [1e-4] * 3})
    assert _legend(rows) == [
        "loss (left axis)",
        "learning rate: connector, language_model (right axis)",  # one schedule, one line: none hidden under another
        "learning rate: vision_encoder (right axis)",
    ]
    assert _legend([{k: v for k, v in row.items() if k != "lr"} for row in rows]) == ["loss (left axis)"]


def test_plot_loss_writes_a_png_of_the_logged_rows(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in _rows({"connector": [1e-3, 1e-3]})))
    assert plot_loss(metrics, tmp_path / "loss.png") == tmp_path / "loss.png"
    with Image.open(tmp_path / "loss.png") as image:
        assert image.format == "PNG"
    assert plot_loss(tmp_path / "none.jsonl", tmp_path / "none.png") is None
