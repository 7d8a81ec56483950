"""BaseFinetuning / BackboneFinetuning: frozen at setup, unfrozen into new param groups, groups restored on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import BackboneFinetuning, BaseFinetuning, Callback, ModelCheckpoint
from torchplug.testing import QUIET, BoringModel, regression_loader

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step`")


class WithBackbone(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.layer = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.backbone(x))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class Rates(Callback):
    """Records, at each epoch start (after the finetuning callback ran), every param group's lr."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.rates.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def _trainer(tmp_path: Path, callbacks: list[Any], **kwargs: Any) -> torchplug.Trainer:
    options = {"max_epochs": 4, "limit_val_batches": 0, **QUIET, **kwargs}
    return torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=callbacks, **options)


def test_backbone_is_frozen_then_trained_with_a_rising_aligned_rate(tmp_path: Path) -> None:
    model = WithBackbone()
    start = model.backbone[0].weight.detach().clone()
    rates = Rates()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 4.0)
    trainer = _trainer(tmp_path, [finetuning, rates])
    trainer.fit(model, regression_loader(n=16, batch_size=8))
    # epoch 1: 0.05 * 0.1; epoch 2: min(4x, head's 0.025); epoch 3: aligned with the head
    assert [pytest.approx(r) for r in rates.rates] == [[0.1], [0.05, 0.005], [0.025, 0.02], [0.0125, 0.0125]]
    assert not torch.equal(model.backbone[0].weight, start) and model.backbone[0].weight.requires_grad
    assert finetuning.previous_backbone_lr == pytest.approx(0.0125)


def test_backbone_untouched_before_the_unfreeze_epoch(tmp_path: Path) -> None:
    model = WithBackbone()
    start = model.backbone[0].weight.detach().clone()
    _trainer(tmp_path, [BackboneFinetuning(unfreeze_backbone_at_epoch=5)], max_epochs=2).fit(
        model, regression_loader(n=16, batch_size=8)
    )
    assert torch.equal(model.backbone[0].weight, start) and not model.backbone[0].weight.requires_grad


def test_resume_puts_the_added_param_groups_back(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    first = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    _trainer(
        tmp_path,
        [first, ModelCheckpoint(dirpath=folder, save_last=True)],
        max_epochs=2,
        enable_checkpointing=True,
    ).fit(WithBackbone(), regression_loader(n=16, batch_size=8))
    names = first.state_dict()["internal_optimizer_metadata"][0]
    assert [g["params"] for g in names] == [
        ["layer.weight", "layer.bias"],
        ["backbone.0.weight", "backbone.0.bias"],
    ]
    model, rates = WithBackbone(), Rates()
    resumed = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    trainer = _trainer(tmp_path, [resumed, rates], max_epochs=3, enable_checkpointing=True)
    trainer.fit(model, regression_loader(n=16, batch_size=8), ckpt_path=folder / "last.ckpt")
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["params"][0] is model.backbone[0].weight
    assert model.backbone[0].weight.requires_grad  # unfrozen in the first run: trains again after the resume
    assert "momentum_buffer" in trainer.optimizers[0].state[model.backbone[0].weight]
    assert [pytest.approx(r) for r in rates.rates] == [[0.025, 0.01]]  # the saved backbone lr (0.005) doubled


def test_freeze_make_trainable_and_filter_params() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2)))
    BaseFinetuning.freeze(model, train_bn=False)
    assert not any(p.requires_grad for p in model.parameters()) and not model[1].track_running_stats
    BaseFinetuning.freeze(model, train_bn=True)
    assert (
        model[1].weight.requires_grad and model[1].track_running_stats and not model[0].weight.requires_grad
    )
    assert len(list(BaseFinetuning.filter_params(model, train_bn=True, requires_grad=False))) == 4
    BaseFinetuning.make_trainable([model[0], [model[2]]])
    assert all(p.requires_grad for p in model.parameters())
    assert len(BaseFinetuning.flatten_modules(model)) == 3


def test_unfreeze_and_add_param_group() -> None:
    layers = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    BaseFinetuning.freeze(layers[1])
    optimizer = torch.optim.SGD(layers[0].parameters(), lr=0.5)
    BaseFinetuning.unfreeze_and_add_param_group(layers[1], optimizer)
    assert optimizer.param_groups[1]["lr"] == 0.05 and layers[1].weight.requires_grad
    with pytest.warns(UserWarning, match="already exist within another group"):
        BaseFinetuning.unfreeze_and_add_param_group(layers, optimizer, lr=1)
    assert len(optimizer.param_groups) == 2  # nothing new to add


def test_backbone_is_required(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationError, match="`backbone` attribute"):
        _trainer(tmp_path, [BackboneFinetuning()]).fit(BoringModel(), regression_loader(n=16, batch_size=8))


def test_base_needs_its_two_methods(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="freeze_before_training"):
        _trainer(tmp_path, [BaseFinetuning()]).fit(BoringModel(), regression_loader(n=16, batch_size=8))


def test_learning_rate_monitor_names_the_added_group(tmp_path: Path) -> None:
    from torchplug.callbacks import LearningRateMonitor
    from torchplug.loggers import CSVLogger

    monitor = LearningRateMonitor()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    options = {**QUIET, "logger": CSVLogger(tmp_path)}
    # the finetuning callback runs first, so the monitor sees the new group at the same epoch start
    _trainer(tmp_path, [finetuning, monitor], max_epochs=2, **options).fit(
        WithBackbone(), regression_loader(n=16, batch_size=8)
    )
    assert list(monitor.lrs) == ["lr-SGD/pg1", "lr-SGD/pg2"]
    assert [pytest.approx(v) for v in monitor.lrs["lr-SGD/pg1"]] == [
        0.1,
        0.05,
    ]  # the history follows the rename
