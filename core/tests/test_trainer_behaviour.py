"""Trainer behaviour that Lightning users rely on: warnings, errors and flags, checked on real in-process runs."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from torch.utils.data import DataLoader

from torchplug import MisconfigurationError, SIGTERMException, Trainer
from torchplug.testing import BoringModel, regression_data


def loader(n: int = 8) -> DataLoader:
    return DataLoader(regression_data(n), batch_size=4)


def trainer_for(tmp_path, **kwargs) -> Trainer:
    options = dict(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path), enable_progress_bar=False,
                   enable_model_summary=False, logger=False, enable_checkpointing=False)  # fmt: skip
    options.update(kwargs)
    return Trainer(**options)


# ---------------------------------------------------------------------------------------------------- module
def test_freeze_and_unfreeze_return_the_module():
    model = BoringModel()
    assert model.freeze() is model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.unfreeze() is model
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_configure_sharded_model_still_runs_with_a_deprecation_warning(tmp_path):
    class Legacy(BoringModel):
        calls = 0

        def configure_sharded_model(self) -> None:
            Legacy.calls += 1

    with pytest.deprecated_call(match="overridden `Legacy.configure_sharded_model` which is deprecated"):
        trainer_for(tmp_path, max_steps=1).fit(Legacy(), loader())
    assert Legacy.calls == 1

    class Both(Legacy):
        def configure_model(self) -> None:
            pass

    with pytest.raises(RuntimeError, match="Both `Both.configure_model`, and `Both.configure_sharded_model`"):
        trainer_for(tmp_path, max_steps=1).fit(Both(), loader())


# ---------------------------------------------------------------------------------------------------- errors
def test_save_checkpoint_without_a_model_is_an_attribute_error(tmp_path):
    trainer = trainer_for(tmp_path)
    assert trainer.model is None
    with pytest.raises(AttributeError, match="only possible if a model is attached"):
        trainer.save_checkpoint(tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


class StatefulScheduler:
    """A scheduler that does not follow torch's LRScheduler API (no ``step()``), but can be saved."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.steps = 0

    def advance(self) -> None:
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


class WithScheduler(BoringModel):
    scheduler_cls: type = StatefulScheduler

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.scheduler = self.scheduler_cls(optimizer)
        return [optimizer], [self.scheduler]


def test_a_custom_scheduler_needs_lr_scheduler_step_in_automatic_optimization(tmp_path):
    with pytest.raises(
        MisconfigurationError, match="`StatefulScheduler` doesn't follow PyTorch's LRScheduler API"
    ):
        trainer_for(tmp_path, max_steps=2).fit(WithScheduler(), loader())

    class Steps(WithScheduler):
        def lr_scheduler_step(self, scheduler, metric):
            scheduler.advance()

    model = Steps()
    trainer_for(tmp_path, max_epochs=2, limit_val_batches=0).fit(model, loader())
    assert model.scheduler.steps == 2  # once per epoch, through the module's hook


def test_a_custom_scheduler_is_accepted_in_manual_optimization(tmp_path):
    class Manual(WithScheduler):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(self._loss(batch))
            optimizer.step()
            self.lr_schedulers().advance()

    model = Manual()
    trainer_for(tmp_path, max_epochs=1, limit_val_batches=0).fit(model, loader())
    assert model.scheduler.steps == 2


def test_a_scheduler_without_state_dict_is_a_type_error(tmp_path):
    class Stateless:
        def __init__(self, optimizer):
            self.optimizer = optimizer

    class Model(WithScheduler):
        scheduler_cls = Stateless

    with pytest.raises(TypeError, match="`Stateless` is invalid .* `state_dict` and `load_state_dict`"):
        trainer_for(tmp_path, max_steps=1).fit(Model(), loader())


# ---------------------------------------------------------------------------------------------------- signals
@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers: main thread"
)
def test_sigterm_raises_sigterm_exception_sets_received_sigterm_and_chains_the_users_handler(tmp_path):
    ran = []
    previous = signal.signal(signal.SIGTERM, lambda *_: ran.append(True))
    seen_during = []

    class Terminated(BoringModel):
        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            seen_during.append(self.trainer.received_sigterm)
            return super().training_step(batch, batch_idx)

    try:
        trainer = trainer_for(tmp_path, max_epochs=1, limit_val_batches=0)
        assert not trainer.received_sigterm
        with pytest.raises(SIGTERMException) as info:
            trainer.fit(Terminated(), loader(16))
        assert info.value.code == 128 + signal.SIGTERM
        assert trainer.received_sigterm and trainer.interrupted
        assert seen_during == [True]  # stopped after the step the signal arrived in
        assert ran == [True]

        trainer.fit(BoringModel(), loader())  # a later stage starts without it
        assert not trainer.received_sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------------- loading
def test_a_missing_hparams_file_warns_and_the_defaults_apply(tmp_path):
    model = BoringModel(lr=0.03)
    trainer = trainer_for(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, loader())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.warns(RuntimeWarning, match="Missing Tags: .*nowhere.yaml"):
        loaded = BoringModel.load_from_checkpoint(tmp_path / "m.ckpt", hparams_file=tmp_path / "nowhere.yaml")
    assert loaded.hparams.lr == 0.1  # the constructor's default, as in Lightning


# ---------------------------------------------------------------------------------------------------- accelerators
def test_cpu_device_stats_are_the_machines_percentages():
    pytest.importorskip("psutil")
    from torchplug.accelerators import Accelerator, CPUAccelerator

    stats = CPUAccelerator().get_device_stats(torch.device("cpu"))
    assert set(stats) == {"cpu_vm_percent", "cpu_percent", "cpu_swap_percent"}
    assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in stats.values())
    assert Accelerator.get_device_stats(CPUAccelerator(), "cpu") == {}  # the base: no figures


# ---------------------------------------------------------------------------------------------------- logging
def test_a_logged_metric_must_be_an_attribute_of_the_module(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")

    class Unattached(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("acc", torchmetrics.MeanMetric())
            return super().training_step(batch, batch_idx)

    with pytest.raises(
        MisconfigurationError, match="fix this by setting an attribute for the metric in your"
    ):
        trainer_for(tmp_path, max_steps=1).fit(Unattached(), loader())

    class Elsewhere(Unattached):
        def __init__(self):
            super().__init__()
            self.bar = torchmetrics.MeanMetric()

    with pytest.raises(
        MisconfigurationError,
        match=r"`self.log\(acc, ..., metric_attribute=name\)` where `name` is one of \['bar'\]",
    ):
        trainer_for(tmp_path, max_steps=1).fit(Elsewhere(), loader())

    class Attached(BoringModel):
        def __init__(self):
            super().__init__()
            self.mean = torchmetrics.MeanMetric()

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.mean(loss.detach())
            self.log("mean_loss", self.mean)
            return loss

    trainer = trainer_for(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(Attached(), loader())
    assert "mean_loss" in trainer.callback_metrics


def test_logging_one_name_twice_in_a_hook_with_other_arguments_is_refused(tmp_path):
    class Twice(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", 1.0, prog_bar=False)
            self.log("foo", 1.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationError, match=r"self.log\(foo, ...\)` twice in `training_step`"):
        trainer_for(tmp_path, max_steps=1).fit(Twice(), loader())

    class SameEachStep(
        BoringModel
    ):  # the same arguments every step, and the name again in another hook: fine
        def training_step(self, batch, batch_idx):
            self.log("foo", float(batch_idx), prog_bar=True)
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self):
            self.log("foo", 5.0, prog_bar=False)

    trainer = trainer_for(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(SameEachStep(), loader())
    assert trainer.callback_metrics["foo"] == 5.0


# ---------------------------------------------------------------------------------------------------- optimizers
def test_a_step_patched_on_torchs_optimizer_class_receives_the_closure(tmp_path):
    """``mock.patch("torch.optim.SGD.step")`` replaces the class's step: it must be called with the closure and the
    user's keywords, as Lightning calls it, even though unpatched SGD takes the closure-first shortcut."""
    from unittest import mock

    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.step(closure=lambda: self.manual_backward(self._loss(batch)))
            optimizer.zero_grad()

    with mock.patch("torch.optim.SGD.step") as step:
        trainer_for(tmp_path, max_steps=2, limit_val_batches=0).fit(Manual(), loader())
    assert step.call_args_list == [mock.call(closure=mock.ANY)] * 2


# ---------------------------------------------------------------------------------------------------- restoring
@pytest.mark.parametrize(("strict_loading", "succeeds"), [(None, False), (True, False), (False, True)])
def test_resuming_honours_the_modules_strict_loading(tmp_path, strict_loading, succeeds):
    trainer = trainer_for(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(BoringModel(), loader())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")

    model = BoringModel()
    model.register_buffer(
        "extra", torch.zeros(2)
    )  # a key the checkpoint lacks (not a parameter: same optimizer)
    model.strict_loading = strict_loading
    resumed = trainer_for(tmp_path, max_steps=2, limit_val_batches=0)
    if succeeds:
        resumed.fit(model, loader(), ckpt_path=tmp_path / "plain.ckpt")
        assert resumed.state.finished and resumed.ckpt_path == str(tmp_path / "plain.ckpt")
    else:
        with pytest.raises(MisconfigurationError, match=r"missing keys \['extra'\]"):
            resumed.fit(model, loader(), ckpt_path=tmp_path / "plain.ckpt")


@pytest.mark.parametrize("strict_loading", [True, False])
def test_keys_renamed_in_on_load_checkpoint_are_the_ones_loaded(tmp_path, strict_loading):
    """Lightning runs ``on_load_checkpoint`` before it loads ``checkpoint["state_dict"]``: a module that renames
    old keys there gets the saved weights (not a key error, nor, with ``strict_loading=False``, nothing loaded)."""
    trainer = trainer_for(tmp_path, max_steps=1, limit_val_batches=0)
    trained = BoringModel()
    trainer.fit(trained, loader())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    checkpoint["state_dict"] = {f"old.{k}": v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "renamed.ckpt")

    class Renaming(BoringModel):
        def on_load_checkpoint(self, checkpoint):
            checkpoint["state_dict"] = {k.removeprefix("old."): v for k, v in checkpoint["state_dict"].items()}

    model = Renaming()
    model.strict_loading = strict_loading
    assert not torch.equal(model.layer.weight, trained.layer.weight)
    trainer_for(tmp_path).validate(model, loader(), ckpt_path=tmp_path / "renamed.ckpt")
    torch.testing.assert_close(model.layer.weight, trained.layer.weight)


def test_a_metric_made_in_setup_can_be_logged_in_each_later_stage(tmp_path):
    """A torchmetrics Metric made anew in ``setup`` for each stage is found as the module's attribute each time."""
    torchmetrics = pytest.importorskip("torchmetrics")

    class MetricInSetup(BoringModel):
        def setup(self, stage):
            self.error = torchmetrics.MeanSquaredError()

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.error(self(x), y)
            self.log("error", self.error)

    model = MetricInSetup()
    trainer = trainer_for(tmp_path, max_steps=1)
    trainer.fit(model, loader(), loader())
    first = model.error
    trainer.validate(model, loader())
    assert model.error is not first and "error" in trainer.callback_metrics


def test_self_log_is_refused_in_hooks_that_cannot_log(tmp_path):
    refused: dict[str, str] = {}

    class Probe(BoringModel):
        def _try(self, hook):
            try:
                self.log("x", 1.0)
            except MisconfigurationError as err:
                refused.setdefault(hook, str(err))  # the first stage that called the hook

        def configure_callbacks(self):
            self._try("configure_callbacks")
            return []

        def lr_scheduler_step(self, scheduler, metric):
            self._try("lr_scheduler_step")
            scheduler.step()

        def on_validation_model_zero_grad(self):
            self._try("on_validation_model_zero_grad")
            super().on_validation_model_zero_grad()

        def on_validation_model_eval(self):
            self._try("on_validation_model_eval")
            super().on_validation_model_eval()

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            self._try("predict_step")
            return super().predict_step(batch, batch_idx)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1)]

    model = Probe()
    trainer = trainer_for(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, loader(), loader())
    trainer.predict(model, loader())
    for hook in ("configure_callbacks", "lr_scheduler_step", "on_validation_model_zero_grad",
                 "on_validation_model_eval"):  # fmt: skip
        assert refused[hook].startswith("You can't `self.log('x', ...)` inside `" + hook), refused
    assert "result collection is not registered yet" in refused["predict_step"]


@pytest.mark.parametrize("compute_groups", [True, False])
def test_log_dict_of_a_metric_collection_copies_state_only_without_compute_groups(tmp_path, compute_groups):
    torchmetrics = pytest.importorskip("torchmetrics")
    seen = []

    class Collection(torchmetrics.MetricCollection):
        def items(self, keep_base=False, copy_state=True):
            seen.append((keep_base, copy_state))
            return super().items(keep_base=keep_base, copy_state=copy_state)

    class Model(BoringModel):
        def __init__(self):
            super().__init__()
            self.metrics = Collection(
                [torchmetrics.MeanMetric(), torchmetrics.SumMetric()], compute_groups=compute_groups
            )

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.metrics(loss.detach())
            seen.clear()
            self.log_dict(self.metrics, on_step=True, on_epoch=True)
            assert seen == [(False, not compute_groups)]
            return loss

    trainer = trainer_for(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(Model(), loader())
    assert {"MeanMetric_epoch", "SumMetric_epoch"} <= set(trainer.callback_metrics)


def test_legacy_tags_csv_round_trip_and_hparams_file(tmp_path):
    from argparse import Namespace

    from torchplug.loggers.csv_logs import load_hparams_from_tags_csv, save_hparams_to_tags_csv

    hparams = {
        "batch_size": 32,
        "learning_rate": 0.008,
        "optimizer_name": "adam",
        "layers": [1, 2],
        "flag": True,
    }
    save_hparams_to_tags_csv(tmp_path / "meta_tags.csv", hparams)
    assert (tmp_path / "meta_tags.csv").read_text().splitlines()[0] == "key,value"
    assert load_hparams_from_tags_csv(tmp_path / "meta_tags.csv") == hparams
    save_hparams_to_tags_csv(tmp_path / "ns.csv", Namespace(lr=0.03))
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_tags_csv(tmp_path / "absent" / "meta_tags.csv", hparams)
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_tags_csv(tmp_path / "absent.csv") == {}

    trainer = trainer_for(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(BoringModel(), loader())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = BoringModel.load_from_checkpoint(tmp_path / "m.ckpt", hparams_file=tmp_path / "ns.csv")
    assert loaded.hparams.lr == 0.03
