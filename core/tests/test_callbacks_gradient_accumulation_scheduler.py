"""GradientAccumulationScheduler: the optimizer steps once per ``scheduling[epoch]`` batches, set per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import Callback, GradientAccumulationScheduler
from torchplug.testing import QUIET, BoringModel, regression_loader

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step`")


class CountSteps(Callback):
    """Counts optimizer steps per epoch and records the accumulation factor each epoch ran with."""

    def __init__(self) -> None:
        self.steps: dict[int, int] = {}
        self.factors: dict[int, int] = {}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.factors[trainer.current_epoch] = trainer.accumulate_grad_batches

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.steps[trainer.current_epoch] = self.steps.get(trainer.current_epoch, 0) + 1


def _fit(tmp_path: Path, callbacks: list[Any], model: Any = None, **kwargs: Any) -> torchplug.Trainer:
    options = {"max_epochs": 4, "limit_val_batches": 0, **QUIET, **kwargs}
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=callbacks, **options)
    trainer.fit(model or BoringModel(), regression_loader(n=80, batch_size=8))  # 10 batches per epoch
    return trainer


def test_steps_follow_the_schedule(tmp_path: Path) -> None:
    counter = CountSteps()
    scheduler = GradientAccumulationScheduler({1: 2, 3: 4})
    trainer = _fit(tmp_path, [counter, scheduler])
    assert scheduler.scheduling == {0: 1, 1: 2, 3: 4}
    assert [scheduler.get_accumulate_grad_batches(e) for e in range(5)] == [1, 2, 2, 4, 4]
    assert counter.steps == {0: 10, 1: 5, 2: 5, 3: 3}  # the last, partial window of epoch 3 steps too
    assert trainer.global_step == 23


def test_accumulated_gradient_is_the_mean_over_the_window(tmp_path: Path) -> None:
    class Grads(Callback):
        grads: list[torch.Tensor] = []

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.grads.append(pl_module.layer.weight.grad.clone())

    model = BoringModel(
        lr=0.0
    )  # weights never move, so the expected gradient is computed on the same weights
    grads = Grads()
    _fit(tmp_path, [grads, GradientAccumulationScheduler({0: 10})], model=model, max_epochs=1)
    x, y = regression_loader(n=80, batch_size=8).dataset.tensors
    model.layer.weight.grad = None
    per_batch = [torch.nn.functional.mse_loss(model(x[i : i + 8]), y[i : i + 8]) for i in range(0, 80, 8)]
    torch.stack(per_batch).mean().backward()
    assert len(grads.grads) == 1
    torch.testing.assert_close(grads.grads[0], model.layer.weight.grad)


@pytest.mark.parametrize("scheduling", [{1: 2, -3: 4}, {0: 2, "2": 1}])
def test_bad_epochs(scheduling: dict[Any, Any]) -> None:
    with pytest.raises(MisconfigurationError, match="Epoch should be an int"):
        GradientAccumulationScheduler(scheduling)


@pytest.mark.parametrize("scheduling", [{1: 0, 3: 4}, {0: 2, 2: "2"}])
def test_bad_factors(scheduling: dict[Any, Any]) -> None:
    with pytest.raises(MisconfigurationError, match="Accumulation factor should be an int"):
        GradientAccumulationScheduler(scheduling)


def test_empty_schedule() -> None:
    with pytest.raises(TypeError, match="non-empty dict"):
        GradientAccumulationScheduler({})


def test_not_with_trainer_accumulate_grad_batches(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        _fit(tmp_path, [GradientAccumulationScheduler({0: 2})], accumulate_grad_batches=2)


def test_a_second_fit_with_the_same_trainer(tmp_path: Path) -> None:
    """The factor the callback left after the first fit is its own, not a Trainer argument to refuse."""
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=2, limit_val_batches=0,
                                callbacks=[GradientAccumulationScheduler({1: 2})], **QUIET)  # fmt: skip
    trainer.fit(BoringModel(), regression_loader(n=16, batch_size=4))
    assert trainer.accumulate_grad_batches == 2 and trainer.global_step == 4 + 2
    trainer.fit(BoringModel(), regression_loader(n=16, batch_size=4))
    assert trainer.state.finished


def test_not_with_manual_optimization(tmp_path: Path) -> None:
    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self._loss(batch))
            opt.step()

    with pytest.raises(RuntimeError, match="manual optimization"):
        _fit(tmp_path, [GradientAccumulationScheduler({0: 2})], model=Manual())


def test_warns_when_optimizer_step_is_overridden(tmp_path: Path) -> None:
    class OwnStep(BoringModel):
        def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            super().optimizer_step(*args, **kwargs)

    with pytest.warns(UserWarning, match="will not be called on every batch"):
        _fit(tmp_path, [GradientAccumulationScheduler({0: 2})], model=OwnStep(), max_epochs=1)
