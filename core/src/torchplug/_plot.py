"""``torchplug plot <metrics.csv>``: a PNG of every logged curve against the step (matplotlib, extra ``plot``)."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

from torchplug._errors import MisconfigurationError

# Curves that differ only by their stage ("train_loss", "val_loss", "val/loss", "loss_epoch") share one panel.
_STAGE_PREFIX = re.compile(r"^(train|training|val|valid|validation|test)[_/\-.]", re.IGNORECASE)
_STEP_SUFFIX = re.compile(r"[_/](step|epoch)$")
_NOT_CURVES = ("step", "epoch")


def plot_metrics(csv_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Draw each metric of a ``metrics.csv`` (as :class:`torchplug.loggers.CSVLogger` writes it) against ``step``.

    Metrics that differ only by a stage prefix or a ``_step``/``_epoch`` suffix (``train_loss``, ``val_loss``)
    share a panel with a legend. Empty cells are skipped, so metrics logged at different intervals plot together.
    Writes ``out_path`` (default: the CSV's path with ``.png``) and returns it.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MisconfigurationError(f"plot: no metrics file at {str(csv_path)!r}; pass the metrics.csv of a run")
    out = Path(out_path) if out_path is not None else csv_path.with_suffix(".png")
    curves = _read_curves(csv_path)
    if not curves:
        raise MisconfigurationError(f"plot: {str(csv_path)!r} has no numeric metric columns besides step/epoch")

    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ModuleNotFoundError(
            "torchplug plot needs matplotlib, which is not installed: pip install 'torchplug[plot]'"
        ) from err

    panels: dict[str, list[str]] = {}
    for name in curves:
        panels.setdefault(_panel_name(name), []).append(name)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    # The object-oriented API draws without pyplot, so no GUI backend is ever touched (works on headless nodes).
    figure = Figure(figsize=(5 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (panel, names) in zip(axes.flat, panels.items(), strict=False):
        for name in names:
            steps, values = curves[name]
            style: dict[str, object] = {"marker": "o", "markersize": 3} if len(steps) < 30 else {}
            if name.startswith("lr-"):
                style["drawstyle"] = "steps-post"  # a learning rate holds its value until the next point
            ax.plot(steps, values, label=name, **style)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    run = csv_path.resolve().parent
    figure.suptitle(f"{run.parent.name}/{run.name}" if run.parent.name else run.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def _read_curves(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise MisconfigurationError(
                f"plot: {str(path)!r} has no 'step' column (columns: {reader.fieldnames or []}); it does not look "
                "like a metrics.csv written by CSVLogger"
            )
        curves: dict[str, tuple[list[float], list[float]]] = {
            name: ([], []) for name in reader.fieldnames if name not in _NOT_CURVES
        }
        for row in reader:
            step = _number(row.get("step"))
            if step is None:
                continue
            for name, (steps, values) in curves.items():
                value = _number(row.get(name))
                if value is not None:
                    steps.append(step)
                    values.append(value)
    return {name: curve for name, curve in curves.items() if curve[0]}


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _panel_name(metric: str) -> str:
    base = _STEP_SUFFIX.sub("", _STAGE_PREFIX.sub("", metric))
    return base or metric


__all__ = ["plot_metrics"]
