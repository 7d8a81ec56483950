"""StochasticWeightAveraging: SWALR replaces the scheduler, the parameters are averaged, the average is kept."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import Callback, StochasticWeightAveraging
from torchplug.testing import QUIET, BoringModel, regression_loader

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step`")


class Snapshots(Callback):
    """The parameters at every training epoch start (after SWA's own epoch-start hook) and each epoch's lr."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.weights.append(pl_module.layer.weight.detach().clone())
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class WithScheduler(BoringModel):
    def __init__(self, interval: str = "epoch") -> None:
        super().__init__()
        self.interval = interval

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.interval}}


def _fit(tmp_path: Path, callbacks: list[Any], model: Any, **kwargs: Any) -> torchplug.Trainer:
    options = {"max_epochs": 4, "limit_val_batches": 0, **QUIET, **kwargs}
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=callbacks, **options)
    trainer.fit(model, regression_loader(n=16, batch_size=8))
    return trainer


def test_the_model_ends_with_the_average_of_the_swa_epochs(tmp_path: Path) -> None:
    snapshots, model = Snapshots(), WithScheduler()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=1)
    trainer = _fit(tmp_path, [swa, snapshots], model)
    # epochs 1..3 (0-based) are averaged, each with the parameters it started from
    expected = torch.stack(snapshots.weights[1:]).mean(dim=0)
    torch.testing.assert_close(model.layer.weight.detach(), expected)
    assert int(swa.n_averaged) == 3
    assert (
        snapshots.lrs[0] == 0.1 and snapshots.lrs[2:] == [pytest.approx(0.05)] * 2
    )  # SWALR annealed in 1 epoch
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "SWALR"


def test_step_scheduler_is_swapped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    with (
        caplog.at_level(logging.INFO, logger="torchplug"),
        pytest.warns(UserWarning, match="only supported every epoch"),
    ):
        _fit(tmp_path, [swa], WithScheduler(interval="step"), max_epochs=1)
    assert "Swapping scheduler `StepLR` for `SWALR`" in caplog.text


def test_one_lr_per_param_group(tmp_path: Path) -> None:
    class TwoGroups(BoringModel):
        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(
                [{"params": [self.layer.weight], "lr": 0.1}, {"params": [self.layer.bias], "lr": 0.2}]
            )

    groups: list[list[Any]] = []

    class Look(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            groups.append(
                [(g["lr"], g["initial_lr"], g["swa_lr"]) for g in trainer.optimizers[0].param_groups]
            )

    _fit(
        tmp_path,
        [StochasticWeightAveraging(swa_lrs=[0.3, 0.4], swa_epoch_start=1), Look()],
        TwoGroups(),
        max_epochs=1,
    )
    assert groups == [[(0.1, 0.3, 0.3), (0.2, 0.4, 0.4)]]


def test_batch_norm_statistics_are_recomputed_for_the_average(tmp_path: Path) -> None:
    class WithNorm(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    model = WithNorm()
    _fit(tmp_path, [StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)], model)
    x = regression_loader(n=16, batch_size=8).dataset.tensors[0]
    hidden = model.layer[0](x).detach()
    torch.testing.assert_close(
        model.layer[1].running_mean, hidden.mean(dim=0)
    )  # of the final, averaged weights
    assert model.layer[1].momentum == 0.1


class DictNorm(BoringModel):
    """Batches are dicts: the module's forward takes the features, its training_step picks them out."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self(batch["x"]), batch["y"])


def _dict_loader() -> Any:
    x, y = regression_loader(n=16, batch_size=4).dataset.tensors
    return torch.utils.data.DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=4)


def test_batch_norm_pass_over_dict_batches_is_an_error_that_keeps_the_statistics(tmp_path: Path) -> None:
    class Keep(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self.state = {k: v.clone() for k, v in pl_module.layer[1].named_buffers()}  # after the last step

    model, keep = DictNorm(), Keep()
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=3, **QUIET,
                                callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2), keep])  # fmt: skip
    with pytest.raises(MisconfigurationError, match=r"a batch is dict: override .*batch_norm_forward"):
        trainer.fit(model, _dict_loader())
    for key, value in model.layer[1].named_buffers():  # the running statistics, not reset ones
        torch.testing.assert_close(value, keep.state[key])
    assert int(model.layer[1].num_batches_tracked) == 3 * 4
    assert model.layer[1].momentum == 0.1


def test_batch_norm_pass_reads_as_many_batches_as_an_epoch_and_can_be_told_the_batch(tmp_path: Path) -> None:
    class DictSWA(StochasticWeightAveraging):
        def batch_norm_forward(self, pl_module: Any, batch: Any) -> None:
            pl_module(batch["x"])

    model = DictNorm()
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=3, limit_train_batches=2,
                                **QUIET, callbacks=[DictSWA(swa_lrs=0.05, swa_epoch_start=2)])  # fmt: skip
    trainer.fit(model, _dict_loader())
    assert model.forwards == 3 * 2 + 2  # 3 epochs of 2 steps, then 2 batches for the statistics (the loader has 4)
    x = torch.cat([b["x"] for b in list(_dict_loader())[:2]])
    torch.testing.assert_close(model.layer[1].running_mean, model.layer[0](x).detach().mean(dim=0))


def test_state_round_trip() -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.1)
    swa._average = [torch.ones(2)]
    swa.n_averaged = torch.tensor(3)
    again = StochasticWeightAveraging(swa_lrs=0.1)
    again.load_state_dict(swa.state_dict())
    assert int(again.n_averaged) == 3 and torch.equal(again._average[0], torch.ones(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"swa_epoch_start": 0, "swa_lrs": 0.1}, ">0 integer or a float between 0 and 1"),
        ({"swa_epoch_start": 1.5, "swa_lrs": 0.1}, ">0 integer or a float between 0 and 1"),
        ({"swa_epoch_start": 5, "swa_lrs": [0.2, 1]}, "positive float, or a list of positive floats"),
        ({"swa_lrs": -0.1}, "positive float"),
        ({"swa_lrs": 0.1, "annealing_strategy": "step"}, "'cos' or 'linear'"),
        ({"swa_lrs": 0.1, "avg_fn": 3}, "should be callable"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationError, match=match):
        StochasticWeightAveraging(**kwargs)
