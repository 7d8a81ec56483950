"""``self.log``: where it may be called, what it accepts, how values are named and reduced, torchmetrics Metrics.

The same rules are compared with Lightning itself in tests/lightning_oracle; these run without it.
"""

from __future__ import annotations

import re

import pytest
import torch
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

from torchplug import Callback, MisconfigurationError, Trainer
from torchplug.testing import BoringModel, regression_loader

QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip


def _fit(model, **kwargs):
    trainer = Trainer(**QUIET, **{"max_epochs": 1, **kwargs})
    trainer.fit(model, regression_loader(16, 4), regression_loader(8, 4))
    return trainer


@pytest.mark.parametrize(
    ("hook", "kwargs", "message"),
    [
        ("on_fit_start", {}, re.escape("You can't `self.log('x', ...)` inside `on_fit_start`")),
        ("configure_optimizers", {}, re.escape("You can't `self.log('x', ...)` outside the steps and hooks")),
        ("on_train_epoch_start", {"on_step": True}, r"You can't `self.log\('x', on_step=True\)` inside"),
        ("training_step", {"on_step": False, "on_epoch": False}, "is not useful"),
        ("training_step", {"reduce_fx": "median"}, r"only `self.log\(..., reduce_fx=\{min,max,mean,sum\}\)`"),
    ],
)
def test_where_self_log_is_refused(hook: str, kwargs: dict, message: str) -> None:
    class Logs(BoringModel):
        pass

    def logging_hook(self, *args, **_):
        self.log("x", 1.0, **kwargs)
        return getattr(BoringModel, hook)(self, *args)

    setattr(Logs, hook, logging_hook)
    with pytest.raises(MisconfigurationError, match=message):
        _fit(Logs())


@pytest.mark.parametrize(
    ("value", "problem"),
    [(None, "`NoneType` values"), ({"a": 1}, "`dict` values"), ({"a": {"b": 1}}, "nested dictionaries"),
     ("text", "`str` values"), ([1, 2], "`list` values")],  # fmt: skip
)
def test_what_self_log_refuses(value, problem: str) -> None:
    class Logs(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", value)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=rf"`self.log\(foo, .*\)` was called, but {problem} cannot be logged"):
        _fit(Logs())


def test_defaults_per_hook_names_and_reductions() -> None:
    class Logs(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("both", float(batch_idx), on_step=True, on_epoch=True)
            self.log("total", 1, reduce_fx="SUM", on_epoch=True, on_step=False)
            self.log("top", float(batch_idx), reduce_fx=max, on_epoch=True, on_step=False)
            return super().training_step(batch, batch_idx)

        def on_train_epoch_start(self):
            self.log("epoch_hook", 5.0)  # an epoch hook logs per epoch by default

        def validation_step(self, batch, batch_idx):
            self.log("val_both", float(batch_idx), on_step=True, on_epoch=True)

    trainer = _fit(Logs())
    callback = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert callback["both_step"] == 3.0 and callback["both_epoch"] == 1.5 and callback["both"] == 1.5
    assert callback["total"] == 4.0 and callback["top"] == 3.0 and callback["epoch_hook"] == 5.0
    assert "val_both_step" not in callback and callback["val_both"] == callback["val_both_epoch"] == 0.5
    assert set(trainer.logged_metrics) >= {"both_step", "both_epoch", "val_both_step", "val_both_epoch"}
    assert all(isinstance(v, torch.Tensor) for v in trainer.logged_metrics.values())


def test_epoch_mean_is_weighted_by_the_inferred_batch_size() -> None:
    values = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    uneven = DataLoader(TensorDataset(values, values), batch_size=4)  # batches of 4, 4 and 2

    class Logs(BoringModel):
        def __init__(self):
            super().__init__(features=1)

        def validation_step(self, batch, batch_idx):
            self.log("mean_x", batch[0].mean())

    [result] = Trainer(**QUIET).validate(Logs(), uneven)
    assert result["mean_x"] == pytest.approx(4.5)  # the mean over samples, not over the three batch means (5.0)


def test_a_torchmetrics_metric_is_logged_per_step_and_per_epoch_and_reset() -> None:
    seen = []

    class Logs(BoringModel):
        def __init__(self):
            super().__init__()
            self.total = torchmetrics.SumMetric()

        def training_step(self, batch, batch_idx):
            self.total(torch.tensor(float(batch_idx + 1)))  # forward: this batch's value and the running state
            self.log("total", self.total, on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self):
            seen.append(float(self.trainer.callback_metrics["total_epoch"]))

    trainer = _fit(Logs(), max_epochs=2)
    assert float(trainer.callback_metrics["total_step"]) == 4.0  # the last batch's own value
    assert seen == [10.0, 10.0]  # compute() over each epoch; reset between epochs


def test_callbacks_log_through_the_module() -> None:
    class Logs(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.log("from_callback", float(batch_idx), on_step=False, on_epoch=True)

    trainer = _fit(BoringModel(), callbacks=[Logs()])
    assert float(trainer.callback_metrics["from_callback"]) == 1.5


def test_several_evaluation_loaders_suffix_every_key() -> None:
    class Logs(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("loss", float(dataloader_idx), on_step=True, on_epoch=True)

        def on_validation_epoch_end(self):
            self.log("shared", 7.0)

    results = Trainer(**QUIET).validate(Logs(), [regression_loader(8, 4), regression_loader(8, 4)])
    assert results == [
        {"loss_epoch/dataloader_idx_0": 0.0, "shared": 7.0},
        {"loss_epoch/dataloader_idx_1": 1.0, "shared": 7.0},
    ]
