"""RichProgressBar and RichModelSummary on the real rich package: tasks per bar, totals, metrics, themes, leave."""

from __future__ import annotations

import io
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug.callbacks import ModelSummary, RichModelSummary, RichProgressBar, RichProgressBarTheme

pytest.importorskip("rich")


class Net(torchplug.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val_loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.layer(batch[0]).pow(2).mean())

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(batches: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(2 * batches, 2)), batch_size=2)


def _bar(**kwargs: Any) -> tuple[RichProgressBar, io.StringIO]:
    out = io.StringIO()
    console = {"file": out, "width": 120, "force_terminal": False}
    return RichProgressBar(console_kwargs=console, **kwargs), out


def _trainer(tmp_path: Path, bar: Any, **kwargs: Any) -> torchplug.Trainer:
    options: dict[str, Any] = dict(default_root_dir=tmp_path, max_epochs=2, enable_checkpointing=False, logger=False,
                                   enable_model_summary=False, num_sanity_val_steps=1)  # fmt: skip
    options.update(kwargs)
    return torchplug.Trainer(accelerator="cpu", callbacks=[bar], **options)


def _rows(bar: RichProgressBar) -> list[tuple[str, float, float | None, bool]]:
    assert bar.progress is not None
    return [(t.description.strip(), t.completed, t.total, t.visible) for t in bar.progress.tasks]


def test_fit_has_a_task_per_bar_and_metrics_after_the_training_bar(tmp_path: Path) -> None:
    bar, out = _bar()
    _trainer(tmp_path, bar).fit(Net(), _loader(3), [_loader(2), _loader(4)])
    # sanity (one batch per loader, the bar reused), the training bar reused across epochs, validation per loader
    assert _rows(bar) == [
        ("Sanity Checking", 1, 1, False),
        ("Epoch 1/1", 3, 3, True),
        ("Validation", 4, 4, False),
    ]
    assert bar.train_progress_bar.completed == 3 and bar.val_progress_bar.total == 4
    rendered = bar.progress.columns[-1]._renderable_cache  # type: ignore[union-attr]  # rich's own render cache
    train_text = str(rendered[bar.train_progress_bar_id][1])
    assert train_text.startswith("train_loss: ") and "val_loss/dataloader_idx_1: " in train_text
    assert str(rendered[bar.val_progress_bar_id][1]) == ""  # metrics only after the training bar
    text = out.getvalue()
    assert "Epoch 1/1" in text and "3/3" in text and "train_loss:" in text
    pickle.loads(pickle.dumps(bar))  # the live display stays behind


def test_validate_test_predict_start_a_new_progress(tmp_path: Path) -> None:
    bar, _ = _bar()
    trainer = _trainer(tmp_path, bar)
    trainer.validate(Net(), _loader(3))
    assert _rows(bar) == [("Validation", 3, 3, True)]
    trainer.test(Net(), _loader(2))
    assert _rows(bar) == [("Testing", 2, 2, True)] and bar.test_progress_bar.completed == 2
    trainer.predict(Net(), _loader(5))
    assert _rows(bar) == [("Predicting", 5, 5, True)]
    assert str(bar.progress.columns[-1]._renderable_cache[0][1]) == ""  # type: ignore[union-attr]  # no metrics


def test_leave_keeps_each_epoch_theme_formats_and_refresh_rate_zero_hides(tmp_path: Path) -> None:
    theme = RichProgressBarTheme(metrics_format=".2e", metrics_text_delimiter=" | ", description="bold")
    bar, _ = _bar(leave=True, theme=theme)
    _trainer(tmp_path, bar, max_epochs=3, limit_val_batches=0).fit(Net(), _loader(2))
    assert [row[0] for row in _rows(bar)] == ["[bold]Epoch 0/2", "[bold]Epoch 1/2", "[bold]Epoch 2/2"]
    text = str(bar.progress.columns[-1]._renderable_cache[bar.train_progress_bar_id][1])  # type: ignore[union-attr]
    value = text.split("train_loss: ")[1]
    assert re.fullmatch(r"\d\.\d\de[-+]\d\d", value), value  # 1.23e-02

    hidden, out = _bar(refresh_rate=0)
    assert hidden.is_disabled and not hidden.is_enabled
    _trainer(tmp_path, hidden, max_epochs=1).fit(Net(), _loader(2))
    assert hidden.progress is None and out.getvalue() == ""


def test_bad_arguments_and_missing_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(torchplug.MisconfigurationError, match=r"refresh_rate=-1"):
        RichProgressBar(refresh_rate=-1)
    with pytest.raises(TypeError, match="train_progress_bar"):
        RichProgressBar().train_progress_bar  # noqa: B018
    monkeypatch.setitem(sys.modules, "rich", None)  # as if not installed
    with pytest.raises(
        ModuleNotFoundError, match=r"`RichProgressBar` requires `rich` >= 10.2.2.*torchplug\[rich\]"
    ):
        RichProgressBar()
    with pytest.raises(ModuleNotFoundError, match="`RichModelSummary` requires `rich`"):
        RichModelSummary()


def test_rich_model_summary_is_the_default_next_to_a_rich_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bar, _ = _bar()
    trainer = torchplug.Trainer(accelerator="cpu", callbacks=[bar], default_root_dir=tmp_path, max_steps=1,
                                logger=False, enable_checkpointing=False, limit_val_batches=0)  # fmt: skip
    summaries = [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert len(summaries) == 1 and isinstance(summaries[0], RichModelSummary)
    trainer.fit(Net(), _loader(2))
    out = capsys.readouterr().out
    assert (
        "┃ Name" in out and "│ layer" in out and "Trainable params" in out and "Total estimated model" in out
    )


def test_a_loader_without_length_gets_a_pulsing_bar(tmp_path: Path) -> None:
    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter([torch.randn(2) for _ in range(6)])

    class Plain(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch).pow(2).mean()

    bar, out = _bar()
    _trainer(tmp_path, bar, max_epochs=1, limit_val_batches=0).fit(
        Plain(), DataLoader(Endless(), batch_size=2)
    )
    assert _rows(bar) == [("Epoch 0/0", 3, None, True)]  # no total: rich pulses
    assert "3/--" in out.getvalue()


def test_metrics_are_read_only_for_a_redraw(tmp_path: Path) -> None:
    """Reading the metrics turns device tensors into numbers (a sync on a GPU): the bar does it for a redraw (at most
    ``refresh_rate`` a second, and at each epoch's end), not at every step."""
    calls = []

    class Counting(RichProgressBar):
        def get_metrics(self, trainer: Any, pl_module: Any = None) -> dict[str, Any]:
            calls.append(trainer.global_step)
            return super().get_metrics(trainer, pl_module)

    bar = Counting(refresh_rate=1, console_kwargs={"file": io.StringIO(), "width": 120, "force_terminal": False})
    _trainer(tmp_path, bar, max_epochs=1, limit_val_batches=0).fit(Net(), _loader(60))
    assert 1 <= len(calls) < 10  # 60 steps; this machine takes well under a second for several of them
