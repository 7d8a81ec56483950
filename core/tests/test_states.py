"""trainer.state: which entry point runs (fn), which part of it (stage), how it ended (status), as in Lightning."""

import pytest

from torchplug import Callback, RunningStage, Trainer, TrainerFn, TrainerState, TrainerStatus
from torchplug.testing import QUIET, BoringModel, regression_loader


class Records(Callback):
    def __init__(self):
        self.seen = []

    def _note(self, hook, trainer):
        self.seen.append((hook, trainer.state.fn, trainer.state.status, trainer.state.stage))

    def on_fit_start(self, trainer, pl_module):
        self._note("fit_start", trainer)

    def on_sanity_check_start(self, trainer, pl_module):
        self._note("sanity", trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._note("train_batch", trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._note("val_batch", trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._note("test_batch", trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._note("predict_batch", trainer)


def test_state_in_every_part_of_every_entry_point():
    records = Records()
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1, limit_val_batches=1, callbacks=[records])
    assert trainer.state == TrainerState(status=TrainerStatus.INITIALIZING, fn=None, stage=None)
    model = BoringModel()
    trainer.fit(model, regression_loader(8, 8), regression_loader(8, 8))
    assert trainer.state.finished and trainer.state.fn == "fit" and trainer.state.stage is None
    for fn in ("validate", "test", "predict"):
        getattr(trainer, fn)(model, regression_loader(8, 8))
        assert trainer.state.finished and trainer.state.fn == fn
    running = TrainerStatus.RUNNING
    assert [(hook, fn, status, stage) for hook, fn, status, stage in records.seen] == [
        ("fit_start", TrainerFn.FITTING, running, RunningStage.TRAINING),
        ("sanity", TrainerFn.FITTING, running, RunningStage.SANITY_CHECKING),
        ("val_batch", TrainerFn.FITTING, running, RunningStage.SANITY_CHECKING),
        ("train_batch", TrainerFn.FITTING, running, RunningStage.TRAINING),
        ("val_batch", TrainerFn.FITTING, running, RunningStage.VALIDATING),
        ("val_batch", TrainerFn.VALIDATING, running, RunningStage.VALIDATING),
        ("test_batch", TrainerFn.TESTING, running, RunningStage.TESTING),
        ("predict_batch", TrainerFn.PREDICTING, running, RunningStage.PREDICTING),
    ]


def test_an_exception_interrupts_and_the_flags_follow_the_stage():
    class Fails(BoringModel):
        def training_step(self, batch, batch_idx):
            assert self.trainer.training and not self.trainer.evaluating
            raise ValueError("boom")

    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Fails(), regression_loader(16, 8))
    assert trainer.interrupted and trainer.state.status == "interrupted" and not trainer.state.finished
    trainer.validating = True
    assert trainer.state.stage == RunningStage.VALIDATING and trainer.evaluating and not trainer.training
    trainer.validating = False
    assert trainer.state.stage is None


def test_enums_are_lightnings():
    assert TrainerFn.FITTING == "fit" and TrainerFn.FITTING == "FIT" and RunningStage.VALIDATING.dataloader_prefix == "val"
    assert RunningStage.SANITY_CHECKING.evaluating and not RunningStage.TRAINING.evaluating
    assert TrainerStatus.INTERRUPTED.stopped and TrainerFn.from_str("test") is TrainerFn.TESTING
    assert {TrainerFn.FITTING: 1}["fit"] == 1
