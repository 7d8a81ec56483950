"""BasePredictionWriter: predictions written per batch and/or at the end, with the samples' dataset indices."""

import functools

import pytest

from torchplug import Callback, MisconfigurationError, Trainer
from torchplug.callbacks import BasePredictionWriter, LambdaCallback
from torchplug.testing import QUIET, BoringModel, regression_loader


class Writer(BasePredictionWriter):
    def __init__(self, interval):
        super().__init__(interval)
        self.batches, self.epochs = [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append((batch_indices, batch_idx, dataloader_idx, tuple(prediction.shape)))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        self.epochs.append((len(predictions), batch_indices))


def test_writer_intervals_and_batch_indices():
    writer = Writer("batch_and_epoch")
    trainer = Trainer(accelerator="cpu", **QUIET, callbacks=[writer])
    assert trainer.predict(BoringModel(), regression_loader(12, 4), return_predictions=False) is None
    assert writer.batches == [([0, 1, 2, 3], 0, 0, (4, 1)), ([4, 5, 6, 7], 1, 0, (4, 1)), ([8, 9, 10, 11], 2, 0, (4, 1))]
    assert writer.epochs == [(3, [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]])]
    writer = Writer("epoch")
    Trainer(accelerator="cpu", **QUIET, callbacks=[writer]).predict(BoringModel(), regression_loader(8, 4))
    assert writer.batches == [] and len(writer.epochs) == 1
    with pytest.raises(MisconfigurationError, match=r"`write_interval` should be one of \['batch'"):
        Writer("sometimes")


def test_lambda_callback_calls_its_functions():
    calls = []
    callback = LambdaCallback(on_fit_start=lambda trainer, module: calls.append("fit"),
                              on_train_batch_end=lambda trainer, module, out, batch, idx: calls.append(idx))  # fmt: skip
    Trainer(accelerator="cpu", **QUIET, max_epochs=1, callbacks=[callback]).fit(BoringModel(), regression_loader(16, 8))
    assert calls == ["fit", 0, 1]
    with pytest.raises(MisconfigurationError, match="'on_nothing' is not a callback hook"):
        LambdaCallback(on_nothing=print)


def test_lambda_callback_with_partials_for_every_hook(tmp_path):
    """Functions without ``__self__`` or ``__name__`` (``functools.partial``), checkpoint hooks included."""
    called = set()

    def record(hook, *args, **kwargs):
        called.add(hook)

    hooks = {n for n in dir(Callback) if n.startswith("on_") and n != "on_exception"} | {"setup", "teardown"}
    callback = LambdaCallback(**{hook: functools.partial(record, hook) for hook in hooks})
    trainer = Trainer(accelerator="cpu", **{**QUIET, "enable_checkpointing": True}, default_root_dir=tmp_path,
                      max_epochs=1, callbacks=[callback])  # fmt: skip
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(8, 8))
    assert {"on_save_checkpoint", "on_train_batch_end", "on_validation_epoch_end", "setup"} <= called


def test_lambda_callback_takes_a_partial_for_a_checkpoint_hook(tmp_path) -> None:
    import functools

    saved = []
    callback = LambdaCallback(on_save_checkpoint=functools.partial(lambda tag, *args: saved.append(tag), "saved"))
    trainer = Trainer(
        accelerator="cpu", default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert saved == ["saved", "saved"]  # the fit-start check of what a checkpoint holds, and the epoch-end save
