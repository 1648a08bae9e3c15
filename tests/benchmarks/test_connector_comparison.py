"""benchmarks/connector_comparison.py's figures, drawn from its stored results: names that do not overlap, a labelled
baseline, legends that cover no data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from matplotlib.text import Annotation, Text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import connector_comparison  # noqa: E402

RESULTS = sorted((ROOT / "benchmarks" / "results").glob("connectors*/results.json"))


def _overlaps(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.parent.name)
def test_tradeoff_names_every_point_without_overlaps_and_labels_the_baseline(path: Path) -> None:
    results = json.loads(path.read_text())
    fig = connector_comparison.tradeoff_figure(results)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        names = [t for t in ax.texts if isinstance(t, Annotation)]
        assert sorted(t.get_text() for t in names) == sorted(r["name"] for r in results)
        boxes = [Text.get_window_extent(t, renderer) for t in names]
        frame = ax.get_window_extent(renderer)
        for i, box in enumerate(boxes):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1, names[i].get_text()
            clashes = [names[j].get_text() for j in range(i) if _overlaps(box, boxes[j])]
            assert not clashes, f"{names[i].get_text()} overlaps {clashes}"
    (legend,) = fig.legends
    baseline = results[0]["baseline"]["overall"]
    assert [t.get_text() for t in legend.get_texts()] == [f"majority-answer baseline ({baseline:.3f})"]
    assert not any(_overlaps(legend.get_window_extent(renderer), ax.get_window_extent(renderer)) for ax in fig.axes)


def test_accuracy_legend_covers_no_bar_and_each_variant_name_ends_under_its_group() -> None:
    results = json.loads(RESULTS[0].read_text())
    fig = connector_comparison.accuracy_figure(results)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes
    (legend,) = fig.legends
    assert not any(_overlaps(legend.get_window_extent(renderer), bar.get_window_extent(renderer)) for bar in ax.patches)
    centres = [ax.transData.transform((x, 0))[0] for x in ax.get_xticks()]
    spacing = centres[1] - centres[0]
    for centre, label in zip(centres, ax.get_xticklabels(), strict=True):  # rotated names end at their group
        assert abs(label.get_window_extent(renderer).x1 - centre) < spacing / 4, label.get_text()
