"""The loop's order and bookkeeping as Lightning's: hooks (with configure_callbacks and the model-mode hooks), modes
of submodules, Mock callbacks, the metrics each stage starts with, evaluation after fit without a model; and the
loop's errors that point at the user's step: a loss that cannot be backpropagated."""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import pytest
import torch

from torchplug import Callback, MisconfigurationError, Trainer
from torchplug.callbacks import ModelCheckpoint
from torchplug.testing import QUIET, BoringModel, regression_loader


class Traced(BoringModel):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.frozen = torch.nn.Linear(1, 1)
        self.frozen.eval()

    def configure_callbacks(self):
        self.calls.append("configure_callbacks")
        return [Added()]

    def configure_model(self):
        self.calls.append("configure_model")

    def on_validation_model_eval(self):
        self.calls.append(("on_validation_model_eval", self.trainer.state.stage.value))
        super().on_validation_model_eval()
        assert not self.trainer.model.training

    def on_validation_model_zero_grad(self):
        self.calls.append("on_validation_model_zero_grad")
        super().on_validation_model_zero_grad()

    def on_validation_start(self):
        self.calls.append("on_validation_start")

    def on_validation_end(self):
        self.calls.append("on_validation_end")

    def on_train_start(self):
        self.calls.append("on_train_start")
        assert self.layer.training and not self.frozen.training  # a submodule the user put in eval() stays so


class Added(Callback):
    def on_fit_start(self, trainer, pl_module):
        pl_module.calls.append("Added.on_fit_start")


def test_hook_order_with_configure_callbacks_and_model_modes():
    calls = []
    model = Traced(calls)
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, num_sanity_val_steps=1)
    trainer.fit(model, regression_loader(8, 8), regression_loader(8, 8))
    assert calls == [
        "configure_callbacks", "configure_model", "Added.on_fit_start",
        ("on_validation_model_eval", "sanity_check"), "on_validation_start", "on_validation_end",
        "on_train_start",
        "on_validation_model_zero_grad", ("on_validation_model_eval", "validate"), "on_validation_start",
        "on_validation_end",
    ]  # fmt: skip
    assert not model.frozen.training and model.layer.training  # modes restored after evaluation
    assert sum(isinstance(c, Added) for c in trainer.callbacks) == 1
    trainer.fit(model, regression_loader(8, 8))  # configure_callbacks again: it replaces, it does not add
    assert sum(isinstance(c, Added) for c in trainer.callbacks) == 1


def test_mock_callbacks_and_metrics_reset_per_stage():
    callback = Mock(spec=Callback)
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1, callbacks=[callback])
    trainer.fit(BoringModel(), regression_loader(8, 8))
    assert callback.on_train_start.call_count == 1 and "train_loss" in trainer.callback_metrics
    resets = []

    class Checks(Callback):
        def on_test_start(self, trainer, pl_module):
            resets.append((dict(trainer.callback_metrics), dict(trainer.logged_metrics), trainer.progress_bar_metrics))

    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1, callbacks=[Checks()])
    trainer.fit(BoringModel(), regression_loader(8, 8))
    trainer.test(BoringModel(), regression_loader(8, 8))
    assert resets == [({}, {}, {})] and isinstance(trainer.logged_metrics["test_loss"], torch.Tensor)


def test_evaluating_after_fit_without_a_model(tmp_path):
    trainer = Trainer(accelerator="cpu", **{**QUIET, "enable_checkpointing": True}, max_epochs=2, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(monitor="val_loss")])  # fmt: skip
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(8, 8))
    with pytest.warns(UserWarning, match="The best model of the previous `fit` call will be used"):
        trainer.validate(dataloaders=regression_loader(8, 8), verbose=False)
    assert trainer.ckpt_path == trainer.checkpoint_callback.best_model_path
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(BoringModel(), regression_loader(16, 8))
    with pytest.warns(UserWarning, match="saved no checkpoint .* the weights in memory"):
        trainer.test(dataloaders=regression_loader(8, 8), verbose=False)
    assert trainer.ckpt_path is None
    with pytest.raises(TypeError, match=r"`Trainer.validate\(\)` requires a `LightningModule`"):
        Trainer(accelerator="cpu", **QUIET).validate()


class ReturnsPerSampleLoss(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return (self(x) - y).pow(2).squeeze(1)  # one loss per sample, not reduced


class ReturnsDetachedLoss(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"loss": super().training_step(batch, batch_idx).detach()}


class ManualDetached(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            loss = self._loss(batch)
        self.manual_backward(loss)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (ReturnsPerSampleLoss(), r"^training_step returned a tensor of shape \(8,\) \(dtype float32, grad_fn=\w+\): "
                                 r"a loss must be one number .* has 8 elements; reduce it \(loss.mean\(\)"),
        (ReturnsDetachedLoss(), r"^training_step returned a dict whose 'loss' is a tensor of shape \(\) \(dtype float32, "
                                r"no grad_fn\): the loss does not require grad.*detached"),
        (ManualDetached(), r"^manual_backward\(loss\) in training_step got a tensor of shape \(\) .*no grad_fn\): "
                           r"the loss does not require grad"),
    ],
    ids=["non-scalar", "detached", "manual-detached"],
)
def test_a_loss_that_cannot_be_backpropagated_names_training_step(model: BoringModel, match: str) -> None:
    with pytest.raises(MisconfigurationError, match=match) as error:
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(model, regression_loader(16))
    assert isinstance(error.value.__cause__, RuntimeError)  # torch's own error stays attached
