"""Exact resume: a run interrupted and resumed ends with parameters bitwise equal to the uninterrupted run."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchplug import Callback, MisconfigurationError, Trainer, seed_everything
from torchplug.callbacks import ModelCheckpoint
from torchplug.testing import QUIET, BoringModel, regression_data


class Noisy(BoringModel):
    """Dropout and a shuffled loader make the result depend on every RNG state being restored."""

    def __init__(self, scheduler: str | None = None):
        super().__init__(lr=0.05)
        self.scheduler = scheduler
        self.layer = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if self.scheduler == "epoch":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)}
        if self.scheduler == "step":
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


class SaveAt(Callback):
    """Checkpoint at the end of a chosen epoch or after a chosen optimizer step."""

    def __init__(self, path, epoch=None, step=None):
        self.path, self.epoch, self.step = path, epoch, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.step is not None and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def loader():
    return DataLoader(regression_data(96), batch_size=8, shuffle=True)


def run(scheduler, max_epochs, accumulate, callbacks=(), ckpt_path=None, max_steps=-1, seed=0, **kwargs):
    seed_everything(seed)
    model = Noisy(scheduler)
    trainer = Trainer(accelerator="cpu", **{**QUIET, **kwargs}, max_epochs=max_epochs, max_steps=max_steps, accumulate_grad_batches=accumulate,
                      callbacks=list(callbacks), num_sanity_val_steps=2)  # fmt: skip
    trainer.fit(model, loader(), DataLoader(regression_data(16), batch_size=8), ckpt_path=ckpt_path)
    return trainer, model


def assert_bitwise_equal(a, b):
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), f"{name} differs after resume"


@pytest.mark.parametrize("scheduler", [None, "epoch", "step"])
@pytest.mark.parametrize("accumulate", [1, 3])
def test_resume_after_epoch_k_is_bitwise_equal(tmp_path, scheduler, accumulate):
    _, full = run(scheduler, 3, accumulate)
    path = tmp_path / "epoch1.ckpt"
    run(scheduler, 2, accumulate, callbacks=[SaveAt(path, epoch=1)])
    trainer, resumed = run(scheduler, 3, accumulate, ckpt_path=path, seed=123)  # another seed: state must come from the file
    assert trainer.current_epoch == 3
    assert_bitwise_equal(full, resumed)


@pytest.mark.parametrize("scheduler", [None, "step"])
def test_resume_mid_epoch_from_a_step_checkpoint_continues_at_the_right_batch(tmp_path, scheduler):
    trainer_full, full = run(scheduler, 2, 1)
    path = tmp_path / "step17.ckpt"
    run(scheduler, 2, 1, callbacks=[SaveAt(path, step=17)], max_steps=17)  # 12 batches an epoch: stops in epoch 1

    seen = []

    class Batches(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.current_epoch, batch_idx))

    trainer, resumed = run(scheduler, 2, 1, callbacks=[Batches()], ckpt_path=path, seed=5)
    assert seen[0] == (1, 5) and len(seen) == 7
    assert trainer.global_step == trainer_full.global_step == 24
    assert_bitwise_equal(full, resumed)


def test_resume_from_last(tmp_path):
    _, full = run(None, 3, 1)
    run(None, 2, 1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], enable_checkpointing=True)
    seed_everything(9)
    model = Noisy()
    trainer = Trainer(accelerator="cpu", **{**QUIET, "enable_checkpointing": True}, max_epochs=3, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    trainer.fit(model, loader(), DataLoader(regression_data(16), batch_size=8), ckpt_path="last")
    assert_bitwise_equal(full, model)


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(MisconfigurationError, match=f"ckpt_path='{missing}'"):
        Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(BoringModel(), loader(), ckpt_path=missing)


def test_checkpoint_that_does_not_fit_lists_the_keys(tmp_path):
    path = tmp_path / "a.ckpt"
    run(None, 1, 1, callbacks=[SaveAt(path, epoch=0)])
    with pytest.raises(MisconfigurationError) as err:
        Trainer(accelerator="cpu", **QUIET, max_epochs=2).fit(BoringModel(), loader(), ckpt_path=path)
    message = str(err.value)
    assert "missing keys ['layer.bias', 'layer.weight']" in message
    assert "unexpected keys ['layer.0.bias', 'layer.0.weight', 'layer.2.bias', 'layer.2.weight']" in message


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    path = tmp_path / "full.ckpt"
    run("epoch", 1, 1, callbacks=[SaveAt(path, epoch=0)])
    from torchplug._checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "ranks",
                "hyper_parameters", "epoch", "global_step"):  # fmt: skip
        assert key in checkpoint, key
    assert [sorted(rank) for rank in checkpoint["ranks"]] == [["epoch_start_rng", "plugins", "rng_states"]]
    assert checkpoint["hyper_parameters"] == {"scheduler": "epoch", "features": 4, "lr": 0.05}
    # saved by a plain callback's on_train_epoch_end: before the epoch's LR scheduler step, which a resume does
    assert checkpoint["global_step"] == 12 and checkpoint["loops"]["phase"] == "validated"


class SaveOnValidationEnd(Callback):
    def __init__(self, path, epoch):
        self.path, self.epoch = path, epoch

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_resume_from_a_checkpoint_taken_after_epoch_end_validation(tmp_path):
    """Saved between the epoch-end validation and the epoch's LR scheduler step: the resume does the step."""
    _, full = run("epoch", 4, 1, check_val_every_n_epoch=2)
    path = tmp_path / "val_end.ckpt"
    run("epoch", 2, 1, callbacks=[SaveOnValidationEnd(path, epoch=1)], check_val_every_n_epoch=2)
    trainer, resumed = run("epoch", 4, 1, ckpt_path=path, seed=77, check_val_every_n_epoch=2)
    assert trainer.current_epoch == 4
    assert_bitwise_equal(full, resumed)


def test_resume_from_the_last_batch_of_an_epoch(tmp_path):
    _, full = run("epoch", 3, 1)
    path = tmp_path / "step24.ckpt"
    run("epoch", 3, 1, callbacks=[SaveAt(path, step=24)], max_steps=24)  # 12 batches an epoch: the end of epoch 1
    _, resumed = run("epoch", 3, 1, ckpt_path=path, seed=3)
    assert_bitwise_equal(full, resumed)


class Plateau(Noisy):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


def test_resume_with_a_plateau_scheduler_from_a_mid_epoch_last_checkpoint(tmp_path):
    def go(max_epochs, ckpt_path=None, seed=0, max_steps=-1, callbacks=()):
        seed_everything(seed)
        model = Plateau()
        trainer = Trainer(accelerator="cpu", **{**QUIET, "enable_checkpointing": True}, max_epochs=max_epochs, max_steps=max_steps,
                          val_check_interval=0.5, callbacks=list(callbacks), default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(model, loader(), DataLoader(regression_data(16), batch_size=8), ckpt_path=ckpt_path)
        return model

    full = go(3)
    last = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_last=True)
    go(3, max_steps=18, callbacks=[last])  # stops after the mid-epoch validation of epoch 1
    resumed = go(3, ckpt_path=tmp_path / "ck" / "last.ckpt", seed=4)
    assert_bitwise_equal(full, resumed)
