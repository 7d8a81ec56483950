"""LearningRateMonitor: names like Lightning's, logged at the scheduler's interval, through the trainer's loggers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import LearningRateMonitor
from torchplug.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append((step, dict(metrics)))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.calls if key in m]


class Net(torchplug.Module):
    def __init__(self, scheduler: str) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.b(self.a(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            [{"params": self.a.parameters()}, {"params": self.b.parameters(), "lr": 0.5}], lr=1.0, momentum=0.9
        )
        if self.scheduler == "epoch":
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]
        if self.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "my_lr"}}
        return optimizer


def _fit(tmp_path: Path, monitor: LearningRateMonitor, scheduler: str, **kwargs: Any) -> Recorder:
    recorder = Recorder()
    trainer = torchplug.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=recorder, callbacks=[monitor], max_epochs=3, log_every_n_steps=2,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip
    trainer.fit(Net(scheduler), DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4))  # 4 steps per epoch
    return recorder


def test_epoch_scheduler_logged_each_epoch_per_param_group(tmp_path: Path) -> None:
    monitor = LearningRateMonitor(log_momentum=True)
    recorder = _fit(tmp_path, monitor, "epoch")
    assert recorder.values("lr-SGD/pg1") == [(0, 1.0), (4, 0.5), (8, 0.25)]
    assert recorder.values("lr-SGD/pg2") == [(0, 0.5), (4, 0.25), (8, 0.125)]
    assert recorder.values("lr-SGD/pg1-momentum") == [(0, 0.9), (4, 0.9), (8, 0.9)]
    assert monitor.lrs["lr-SGD/pg1"] == [1.0, 0.5, 0.25]


def test_step_scheduler_logged_every_log_every_n_steps(tmp_path: Path) -> None:
    recorder = _fit(tmp_path, LearningRateMonitor(), "step")
    # The rate used by optimizer step s+1 (LambdaLR: 1/(s+1)) is logged at step s for s = 1, 3, 5, ..., 11.
    assert recorder.values("my_lr/pg1") == [(s, 1.0 / (s + 1)) for s in range(1, 12, 2)]
    assert recorder.values("my_lr/pg2") == [(s, 0.5 / (s + 1)) for s in range(1, 12, 2)]


def test_logging_interval_overrides(tmp_path: Path) -> None:
    # Without a scheduler an optimizer logs per step; logging_interval="epoch" moves it to epoch starts.
    # without a scheduler: at the logging steps and, as in Lightning, at each epoch's start too
    assert [s for s, _ in _fit(tmp_path / "a", LearningRateMonitor(), "none").values("lr-SGD/pg1")] == [
        0, 1, 3, 4, 5, 7, 8, 9, 11]  # fmt: skip
    assert [s for s, _ in _fit(tmp_path / "b", LearningRateMonitor("epoch"), "none").values("lr-SGD/pg1")] == [0, 4, 8]
    assert [s for s, _ in _fit(tmp_path / "c", LearningRateMonitor("step"), "epoch").values("lr-SGD/pg1")] == [
        1, 3, 5, 7, 9, 11,
    ]  # fmt: skip


def test_gradient_accumulation_logs_each_step_once(tmp_path: Path) -> None:
    recorder = _fit(tmp_path, LearningRateMonitor(), "none", accumulate_grad_batches=2)  # 2 steps per epoch
    assert [s for s, _ in recorder.values("lr-SGD/pg1")] == [0, 1, 2, 3, 4, 5]  # epoch starts (0, 2, 4) and steps


def test_names_of_several_optimizers() -> None:
    model = nn.Linear(2, 2)
    adam1 = torch.optim.Adam(model.parameters(), lr=0.1)
    adam2 = torch.optim.Adam([{"params": model.parameters(), "name": "head"}], lr=0.2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.3)
    trainer = SimpleNamespace(
        lr_scheduler_configs=[SimpleNamespace(scheduler=torch.optim.lr_scheduler.StepLR(sgd, 1), name=None,
                                              interval="epoch")],  # fmt: skip
        optimizers=[adam1, adam2, sgd],
    )
    names = [names for names, _, _ in LearningRateMonitor._tracked(trainer)]
    assert names == [["lr-SGD"], ["lr-Adam"], ["lr-Adam-1/head"]]  # Lightning's names


def test_needs_a_logger(tmp_path: Path) -> None:
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, callbacks=[LearningRateMonitor()],
                                max_epochs=1, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(MisconfigurationError, match="Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger"):
        trainer.fit(Net("none"), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=4))
    with pytest.raises(MisconfigurationError, match="logging_interval='batch'"):
        LearningRateMonitor("batch")
