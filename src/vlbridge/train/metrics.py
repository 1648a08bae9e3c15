"""Training metrics: one JSON object per logged step in `metrics.jsonl`, and loss curves drawn to `loss.png`.

The JSONL file is append-only while a stage runs; a resumed stage first cuts it back to the checkpoint's step, so
every step appears once however often the run was interrupted. Plots are drawn on a bare matplotlib Figure (the Agg
renderer, no display and no pyplot state); matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlbridge.atomic import atomic_path, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
LR_COLOURS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")  # never the loss's blue


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a metrics.jsonl file (a torn last line, from a kill mid-write, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Appends metric rows to `<stage dir>/metrics.jsonl` (only on the main process)."""

    def __init__(self, stage_dir: str | Path, enabled: bool = True) -> None:
        self.path = Path(stage_dir) / METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Keep only rows up to optimiser step `step` (what a resumed checkpoint has seen)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= step]
        write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def append(self, row: dict[str, Any]) -> None:
        """Add one row and flush it to disk."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()


def _lr_schedules(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Learning rate per step, one series per distinct schedule, labelled with the parts that follow it: parts on the
    same schedule share one line, which would otherwise hide the others under it."""
    schedules: dict[tuple[float, ...], list[str]] = {}
    for part in rows[0].get("lr") or {}:
        series = tuple(r["lr"].get(part, float("nan")) for r in rows)
        schedules.setdefault(series, []).append(part)
    return {f"learning rate: {', '.join(parts)}": list(series) for series, parts in schedules.items()}


def loss_figure(rows: list[dict[str, Any]], title: str = "") -> Figure:
    """Loss (and learning rate, on a second axis) against step, for metric rows holding a loss. One legend, under the
    plot, names every line: the loss and each learning-rate schedule."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend switch

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    lines = ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", linewidth=2, label="loss (left axis)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    schedules = _lr_schedules(rows)
    if schedules:
        lr_ax = ax.twinx()
        for i, (label, series) in enumerate(schedules.items()):
            colour = LR_COLOURS[i % len(LR_COLOURS)]
            lines += lr_ax.plot(steps, series, color=colour, linestyle="--", label=f"{label} (right axis)")
        lr_ax.set_ylabel("learning rate")
    fig.legend(handles=lines, loc="outside lower center", ncol=min(len(lines), 2), fontsize="small", frameon=False)
    ax.set_title(title)
    return fig


def plot_loss(metrics_path: str | Path, out: str | Path, title: str = "") -> Path | None:
    """Draw `loss_figure` of a metrics file into a PNG; None when nothing was logged."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    out = Path(out)
    with atomic_path(out) as tmp:
        loss_figure(rows, title).savefig(tmp, format="png")
    return out
