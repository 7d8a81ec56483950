"""plot_metrics: a PNG of the curves in a metrics.csv, panels grouped by metric, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchplug import MisconfigurationError
from torchplug._plot import _panel_name, _read_curves, plot_metrics
from torchplug.loggers import CSVLogger

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(tmp_path: Path) -> Path:
    logger = CSVLogger(tmp_path)
    for step in range(0, 40, 2):
        logger.log_metrics({"train_loss": 1.0 / (step + 1), "epoch": float(step // 10)}, step)
        if step % 10 == 8:
            logger.log_metrics({"val_loss": 2.0 / (step + 1), "val_acc": step / 40, "epoch": float(step // 10)}, step)
    logger.finalize("success")
    return Path(logger.log_dir) / "metrics.csv"


def test_curves_from_a_csv_logger_file(tmp_path: Path) -> None:
    curves = _read_curves(_write_run(tmp_path))
    assert sorted(curves) == ["train_loss", "val_acc", "val_loss"]  # step and epoch are axes, not curves
    steps, values = curves["val_loss"]
    assert steps == [8.0, 18.0, 28.0, 38.0] and values[0] == pytest.approx(2.0 / 9)  # empty cells skipped
    assert len(curves["train_loss"][0]) == 20


def test_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    csv_path = _write_run(tmp_path)
    out = plot_metrics(csv_path)
    assert out == csv_path.with_suffix(".png")
    data = out.read_bytes()
    assert data.startswith(_PNG_MAGIC) and len(data) > 10_000
    # train_loss and val_loss share a panel, val_acc has its own: a 2-panel figure is 2 * 500 px wide at 100 dpi.
    width = int.from_bytes(data[16:20], "big")
    assert width == 1000
    custom = plot_metrics(csv_path, tmp_path / "plots" / "run.png")
    assert custom == tmp_path / "plots" / "run.png" and custom.read_bytes().startswith(_PNG_MAGIC)


def test_panel_grouping() -> None:
    assert _panel_name("train_loss") == _panel_name("val_loss") == _panel_name("val/loss") == "loss"
    assert _panel_name("loss_epoch") == _panel_name("loss_step") == "loss"
    assert _panel_name("lr-SGD") == "lr-SGD" and _panel_name("val") == "val"


def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MisconfigurationError, match="no metrics file at .*missing.csv"):
        plot_metrics(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(MisconfigurationError, match="no 'step' column"):
        plot_metrics(other)
    empty = tmp_path / "empty.csv"
    empty.write_text("step,epoch\n0,0\n")
    with pytest.raises(MisconfigurationError, match="no numeric metric columns"):
        plot_metrics(empty)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchplug\[plot\]'"):
        plot_metrics(_write_run(tmp_path))
