"""The Tuner and its callbacks: the learning rate range test and the batch size search, run inside a real stage and
put back afterwards (weights, optimizer, trainer flags, callbacks, loggers; no temporary checkpoint left)."""

from __future__ import annotations

import math
import os
from copy import deepcopy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import BatchSizeFinder, LearningRateFinder
from torchplug.loggers import CSVLogger
from torchplug.tuner import LRFinder, Tuner, is_oom_error

DATA = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))


class Regression(torchplug.Module):
    """A linear regression whose data loaders read ``self.batch_size`` and whose optimizer reads ``self.lr``."""

    def __init__(self, lr: float = 0.01, batch_size: int = 4) -> None:
        super().__init__()
        self.lr, self.batch_size = lr, batch_size
        self.layer = nn.Linear(4, 1)
        self.train_batch_sizes: list[int] = []
        self.val_batch_sizes: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.train_batch_sizes.append(len(batch[0]))
        return nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batch_sizes.append(len(batch[0]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(DATA, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(DATA, batch_size=self.batch_size)


class RunsOutOfMemory(Regression):
    """A stand-in for a GPU that fits at most ``limit`` samples per batch: a larger batch raises the RuntimeError
    torch raises when CUDA memory runs out (no GPU here, so the error is raised, not provoked)."""

    def __init__(self, limit: int, batch_size: int = 2) -> None:
        super().__init__(batch_size=batch_size)
        self.limit = limit

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if len(batch[0]) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().training_step(batch, batch_idx)


def make_trainer(tmp_path: Any, **kwargs: Any) -> torchplug.Trainer:
    options = {"accelerator": "cpu", "max_epochs": 3, "enable_progress_bar": False, "enable_model_summary": False,
               "default_root_dir": tmp_path, "logger": False, "enable_checkpointing": False, **kwargs}  # fmt: skip
    return torchplug.Trainer(**options)


def leftovers(path: Any) -> list[str]:
    return [name for name in os.listdir(path) if name.startswith((".lr_find", ".scale_batch_size"))]


# ---------------------------------------------------------------------------------------------------- lr_find
def test_lr_find_records_the_ramp_and_puts_everything_back(tmp_path):
    model = Regression()
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, logger=logger, enable_checkpointing=True, limit_val_batches=2)
    before = deepcopy(model.state_dict())
    watched = ("global_step", "current_epoch", "max_steps", "limit_val_batches", "should_stop")
    flags = {name: getattr(trainer, name) for name in watched}
    callbacks, loggers = list(trainer.callbacks), list(trainer.loggers)

    finder = Tuner(trainer).lr_find(
        model, min_lr=1e-4, max_lr=1.0, num_training=20, early_stop_threshold=None
    )

    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == len(losses) == 20
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs, lrs[1:]))  # exponential: each step multiplies the rate
    assert lrs[10] / lrs[9] == pytest.approx(lrs[1] / lrs[0])
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)
    assert {name: getattr(trainer, name) for name in watched} == flags
    assert trainer.callbacks == callbacks and trainer.loggers == loggers
    assert model.trainer is trainer
    assert leftovers(tmp_path) == []
    # update_attr (the Tuner's default): the suggestion is the model's learning rate, and fit trains with it
    assert model.lr == finder.suggestion() != 0.01
    trainer.fit(model)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(finder.suggestion())
    assert trainer.global_step == 3 * 16  # the search's steps are not counted


def test_lr_find_linear_mode_and_swapped_bounds(tmp_path):
    finder = Tuner(make_trainer(tmp_path)).lr_find(
        Regression(),
        min_lr=0.5,
        max_lr=0.1,
        num_training=5,
        mode="linear",
        update_attr=False,
        early_stop_threshold=None,
    )
    lrs = finder.results["lr"]
    assert lrs == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])


def test_lr_find_stops_when_the_loss_diverges(tmp_path):
    model = Regression()
    finder = Tuner(make_trainer(tmp_path, max_epochs=10)).lr_find(
        model, min_lr=1e-3, max_lr=1e3, num_training=100
    )
    assert 1 < len(finder.results["loss"]) < 100  # a rate of 1e3 makes SGD diverge long before the end
    assert math.isfinite(finder.results["loss"][0])


def test_lr_find_records_nan_for_steps_without_a_loss(tmp_path):
    class SometimesNothing(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx in (3, 7) else super().training_step(batch, batch_idx)

    finder = Tuner(make_trainer(tmp_path)).lr_find(
        SometimesNothing(), num_training=12, early_stop_threshold=None
    )
    losses = torch.tensor(finder.results["loss"])
    assert len(losses) == 12
    assert torch.isnan(losses[[3, 7]]).all() and torch.isfinite(losses[[0, 1, 2, 4]]).all()


def test_suggestion_is_the_steepest_descent():
    finder = LRFinder("linear", 0.0, 2 * math.pi, 1000)
    lrs = torch.linspace(0, 2 * math.pi, 1000)
    finder.results = {"lr": lrs.tolist(), "loss": torch.sin(lrs).tolist()}
    assert finder.suggestion(skip_begin=2, skip_end=2) == pytest.approx(math.pi, abs=1e-2)
    finder.results["loss"][500] = float("nan")  # non-finite points are left out, not fatal
    assert finder.suggestion(skip_begin=2, skip_end=2) == pytest.approx(math.pi, abs=1e-2)


def test_suggestion_needs_two_finite_points(caplog):
    finder = LRFinder("exponential", 1e-8, 1.0, 100)
    finder.results = {"lr": [0.1, 0.2, 0.3], "loss": [1.0, float("nan"), 0.5]}
    assert finder.suggestion(skip_begin=0, skip_end=1) is None
    assert "Failed to compute suggestion for learning rate" in caplog.text
    assert finder.suggestion(skip_begin=0, skip_end=0) == 0.1  # two finite points, one slope: the first


def test_lr_finder_plot(tmp_path):
    pytest.importorskip("matplotlib")
    finder = LRFinder("exponential", 1e-3, 1.0, 20)
    finder.results = {
        "lr": [10 ** (-3 + i * 0.15) for i in range(20)],
        "loss": [1 / (i + 1) for i in range(20)],
    }
    figure = finder.plot(suggest=True)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and len(axes.lines) == 2  # the curve and the suggestion
    figure.savefig(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_lr_find_errors(tmp_path):
    class NoRate(Regression):
        def __init__(self) -> None:
            super().__init__()
            del self.lr

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class TwoOptimizers(Regression):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            return None

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    tuner = Tuner(make_trainer(tmp_path))
    with pytest.raises(AttributeError, match="should have one of these fields"):
        tuner.lr_find(NoRate())
    with pytest.raises(AttributeError, match="'my_lr'"):
        tuner.lr_find(Regression(), attr_name="my_lr")
    with pytest.raises(MisconfigurationError, match="only works with single optimizer"):
        tuner.lr_find(TwoOptimizers())
    with pytest.raises(ValueError, match="`mode` should be either of"):
        tuner.lr_find(Regression(), mode="cubic")
    with pytest.raises(
        ValueError, match=r"lr_find\(min_lr=0\): a learning rate must be a finite number above 0"
    ):
        tuner.lr_find(Regression(), min_lr=0)
    with pytest.raises(ValueError, match=r"num_training=0"):
        LearningRateFinder(num_training_steps=0)
    with pytest.raises(MisconfigurationError, match="method='fit' is the only valid"):
        tuner.lr_find(Regression(), method="validate")
    with pytest.raises(ValueError, match="already configured with a `LearningRateFinder`"):
        Tuner(make_trainer(tmp_path, callbacks=[LearningRateFinder()])).lr_find(Regression())
    assert leftovers(tmp_path) == []


def test_tuner_skips_with_fast_dev_run(tmp_path):
    tuner = Tuner(make_trainer(tmp_path, fast_dev_run=True))
    with pytest.warns(UserWarning, match="Skipping learning rate finder since `fast_dev_run` is enabled"):
        assert tuner.lr_find(Regression()) is None
    with pytest.warns(UserWarning, match="Skipping batch size scaler since `fast_dev_run` is enabled"):
        assert tuner.scale_batch_size(Regression()) is None


def test_learning_rate_finder_callback_searches_then_trains(tmp_path):
    model = Regression(lr=1e-5)
    finder = LearningRateFinder(num_training_steps=20, early_stop_threshold=None)
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[finder], limit_val_batches=2)
    trainer.fit(model)
    assert len(finder.optimal_lr.results["lr"]) == 20
    assert model.lr == finder.optimal_lr.suggestion() and model.lr != 1e-5
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(model.lr)
    assert len(model.train_batch_sizes) == 20 + 32  # the search's steps, then two whole epochs of 16 batches
    assert trainer.global_step == 32 and trainer.current_epoch == 2
    assert trainer.num_val_batches == [2]  # the search's limit did not stay
    assert leftovers(tmp_path) == []


def test_learning_rate_finder_searches_again_at_milestones(tmp_path):
    class AtMilestones(LearningRateFinder):
        """A search at the start of the epochs in ``milestones`` (Lightning's documented subclass)."""

        def __init__(self, milestones: tuple[int, ...], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.milestones, self.steps_at_search = milestones, []

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            return None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch in self.milestones:
                self.lr_find(trainer, pl_module)
                self.steps_at_search.append((trainer.current_epoch, trainer.global_step))

    model = Regression(lr=1e-4)
    finder = AtMilestones((0, 1), num_training_steps=12, early_stop_threshold=None)
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[finder])
    trainer.fit(model)
    assert finder.steps_at_search == [(0, 0), (1, 16)]  # step and epoch put back after each search
    assert trainer.global_step == 48 and len(model.train_batch_sizes) == 48 + 2 * 12
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(model.lr)


def test_learning_rate_finder_removes_its_checkpoint_on_error(tmp_path):
    class Fails(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 2:
                raise ValueError("broken step")
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(tmp_path, callbacks=[LearningRateFinder(num_training_steps=5)])
    with pytest.raises(ValueError, match="broken step"):
        trainer.fit(Fails())
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- batch size
@pytest.mark.parametrize(("mode", "expected"), [("power", 8), ("binsearch", int(13 * 0.9))])
def test_scale_batch_size_recovers_from_out_of_memory(tmp_path, mode, expected):
    model = RunsOutOfMemory(limit=13)
    trainer = make_trainer(tmp_path)
    before = deepcopy(model.state_dict())
    found = Tuner(trainer).scale_batch_size(model, mode=mode, steps_per_trial=1, margin=0.1)
    assert found == expected == model.batch_size
    assert trainer.train_dataloader.batch_size == expected  # the data was loaded again with the size found
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert leftovers(tmp_path) == []


def test_scale_batch_size_stops_at_the_dataset_and_at_max_trials(tmp_path):
    def search(**kwargs: Any) -> int | None:
        return Tuner(make_trainer(tmp_path)).scale_batch_size(
            Regression(batch_size=2), steps_per_trial=1, **kwargs
        )

    assert search(init_val=8, max_trials=2) == 16
    assert search(init_val=8, max_trials=10) == 64  # len(DATA)
    assert search(init_val=4, max_trials=10, max_val=16) == 16
    assert search(init_val=5, max_trials=0) == 5


@pytest.mark.parametrize(("mode", "expected"), [("power", 8), ("binsearch", 12)])
def test_scale_batch_size_returns_a_size_that_ran(tmp_path, mode, expected):
    """``max_val`` is tried before it is kept (16 runs out of memory here), and when even the first size fails the
    smaller ones are tried, down to a clear error when none fits."""
    tuner = Tuner(make_trainer(tmp_path))
    found = tuner.scale_batch_size(RunsOutOfMemory(limit=13), mode=mode, init_val=4, max_val=16, steps_per_trial=1)
    assert found == expected  # binsearch: 13 fit, 14 did not, less the 5% margin
    assert tuner.scale_batch_size(RunsOutOfMemory(limit=1), mode=mode, init_val=2, steps_per_trial=1) == 1
    with pytest.raises(MisconfigurationError, match="even a batch size of 1 ran out of memory"):
        tuner.scale_batch_size(RunsOutOfMemory(limit=0), mode=mode, init_val=2, steps_per_trial=1)
    assert leftovers(tmp_path) == []


def test_batch_size_finder_accepts_validation_loaders_given_to_fit(tmp_path):
    """The trials run training steps only, so validation loaders passed to ``fit`` are allowed (as in Lightning)."""
    model = Regression(batch_size=2)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[BatchSizeFinder(max_trials=3, steps_per_trial=1)])
    trainer.fit(model, val_dataloaders=model.val_dataloader())
    assert model.batch_size == 8 and trainer.train_dataloader.batch_size == 8  # 2, 4, 8: three trials


def test_scale_batch_size_raises_other_errors(tmp_path):
    class Broken(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes do not match"):
        Tuner(make_trainer(tmp_path)).scale_batch_size(Broken())
    assert leftovers(tmp_path) == []


def test_scale_batch_size_writes_where_the_size_lives(tmp_path):
    class Data(torchplug.DataModule):
        def __init__(self, batch_size: int) -> None:
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self) -> DataLoader:
            return DataLoader(DATA, batch_size=self.hparams.batch_size)

    class NoSize(Regression):
        def __init__(self) -> None:
            super().__init__()
            del self.batch_size

    data = Data(batch_size=2)
    trainer = make_trainer(tmp_path, limit_val_batches=0)
    found = Tuner(trainer).scale_batch_size(
        NoSize(), datamodule=data, init_val=2, max_trials=3, steps_per_trial=1
    )
    assert found == data.hparams.batch_size == trainer.train_dataloader.batch_size == 8

    model = Regression()
    model.save_hyperparameters({"batch_size": 4})
    with pytest.warns(UserWarning, match="mutually exclusive"):
        found = Tuner(make_trainer(tmp_path)).scale_batch_size(
            model, init_val=4, max_trials=2, steps_per_trial=1
        )
    assert found == model.batch_size == model.hparams.batch_size == 8


def test_batch_size_finder_callback_in_fit_and_validate(tmp_path):
    model = RunsOutOfMemory(limit=16)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[BatchSizeFinder(steps_per_trial=1)])
    trainer.fit(model)
    assert model.batch_size == 16 and trainer.global_step == 64 // 16
    assert model.train_batch_sizes[-4:] == [16] * 4
    assert model.val_batch_sizes[-4:] == [16] * 4  # validation in fit read the new loaders too

    model = Regression(batch_size=2)
    model.val_batch_sizes.clear()
    trainer = make_trainer(tmp_path, callbacks=[BatchSizeFinder(init_val=2, max_trials=3, steps_per_trial=1)])
    trainer.validate(model)
    assert model.batch_size == 8
    assert model.val_batch_sizes[-8:] == [8] * 8  # the validation itself ran at the size found
    assert trainer.val_dataloaders.batch_size == 8
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("threshold", ["4", 0, -1.0, float("nan")])
def test_lr_find_refuses_a_bad_early_stop_threshold(tmp_path, threshold):
    with pytest.raises(ValueError, match=r"lr_find\(early_stop_threshold="):
        Tuner(make_trainer(tmp_path)).lr_find(Regression(), early_stop_threshold=threshold)
    with pytest.raises(ValueError, match=r"lr_find\(early_stop_threshold="):
        LearningRateFinder(early_stop_threshold=threshold)
    assert leftovers(tmp_path) == []


def test_batch_size_finder_errors(tmp_path):
    model = Regression()
    with pytest.raises(MisconfigurationError, match="cannot be used with dataloaders passed directly"):
        Tuner(make_trainer(tmp_path)).scale_batch_size(model, train_dataloaders=model.train_dataloader())
    with pytest.raises(MisconfigurationError, match="Field missing_name not found"):
        Tuner(make_trainer(tmp_path)).scale_batch_size(model, batch_arg_name="missing_name")
    with pytest.raises(ValueError, match="`mode` should be either of"):
        BatchSizeFinder(mode="double")
    with pytest.raises(
        ValueError, match=r"scale_batch_size\(steps_per_trial=0\): expected an int of at least 1"
    ):
        BatchSizeFinder(steps_per_trial=0)
    with pytest.raises(ValueError, match="method 'train' is invalid"):
        Tuner(make_trainer(tmp_path)).scale_batch_size(model, method="train")
    with pytest.raises(MisconfigurationError, match="please consider setting `dataloaders` instead"):
        Tuner(make_trainer(tmp_path)).scale_batch_size(
            model, val_dataloaders=model.val_dataloader(), method="test"
        )
    with pytest.raises(ValueError, match="already configured with a `BatchSizeFinder`"):
        Tuner(make_trainer(tmp_path, callbacks=[BatchSizeFinder()])).scale_batch_size(model)
    with pytest.raises(MisconfigurationError, match="scale_batch_size runs inside a stage"):
        from torchplug.tuner._batch_size import scale_batch_size

        scale_batch_size(make_trainer(tmp_path))
    assert leftovers(tmp_path) == []


def test_is_oom_error():
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_oom_error(RuntimeError("CUDA error: out of memory"))
    assert is_oom_error(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if ..."))
    assert is_oom_error(
        RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried 8 GB")
    )
    assert is_oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(ValueError("CUDA out of memory"))
    assert not is_oom_error(RuntimeError("CUDA out of memory", "two arguments"))
