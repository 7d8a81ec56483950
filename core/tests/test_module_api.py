"""The Module/DataModule API with Lightning's names: hooks, logging, optimizers, manual optimization."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchplug import Callback, DataModule, MisconfigurationError, Trainer, seed_everything
from torchplug.testing import QUIET, BoringModel, regression_data, regression_loader

# Lightning 2.6.6's order (checked against it): zero_grad runs inside the step's closure, before backward.
HOOKS = [
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start",
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_train_batch_end", "on_validation_start", "on_validation_epoch_start", "on_validation_batch_start",
    "on_validation_batch_end", "on_validation_epoch_end", "on_validation_end", "on_train_epoch_end",
    "on_train_end", "on_fit_end", "teardown",
]  # fmt: skip


def _recorder(name):
    def record(self, *args, **kwargs):
        self.called.append(name)
        assert self.device == torch.device("cpu")

    return record


HookOrder = type("HookOrder", (BoringModel,), {name: _recorder(name) for name in HOOKS})


def test_hooks_run_in_lightnings_order():
    model = HookOrder()
    model.called = []
    Trainer(accelerator="cpu", **QUIET, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0).fit(
        model, regression_loader(8, 8), regression_loader(8, 8)
    )
    assert model.called == HOOKS


def test_callback_hooks_receive_trainer_and_module():
    seen = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, type(pl_module).__name__, float(outputs["loss"]) > 0, batch_idx))

    Trainer(accelerator="cpu", **QUIET, max_steps=2, callbacks=[Spy()]).fit(BoringModel(), regression_loader(32, 8))
    assert seen == [(1, "BoringModel", True, 0), (2, "BoringModel", True, 1)]


def test_training_step_may_return_a_dict_or_none():
    class DictOrNone(BoringModel):
        outputs = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                return None  # skipped: no backward, no change to the weights
            return {"loss": super().training_step(batch, batch_idx), "extra": batch_idx}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.outputs.append(outputs)

    model = DictOrNone()
    Trainer(accelerator="cpu", **QUIET, max_steps=3).fit(model, regression_loader(32, 8))
    assert model.outputs[0]["extra"] == 0 and model.outputs[1] is None and model.outputs[2]["extra"] == 2
    with pytest.raises(MisconfigurationError, match="must return a Tensor, a dict, or None.*returned str"):

        class Bad(BoringModel):
            def training_step(self, batch, batch_idx):
                return "loss"

        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(Bad(), regression_loader(32, 8))


@pytest.mark.parametrize(
    "form",
    ["optimizer", "list", "tuple_of_lists", "dict_scheduler", "dict_scheduler_config", "plateau"],
)
def test_configure_optimizers_forms(form):
    class Form(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {
                "optimizer": opt,
                "list": [opt],
                "tuple_of_lists": ([opt], [step]),
                "dict_scheduler": {"optimizer": opt, "lr_scheduler": step},
                "dict_scheduler_config": {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "step", "frequency": 2}},
                "plateau": {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0), "monitor": "val_loss"}},
            }[form]  # fmt: skip

    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=2, limit_train_batches=4, num_sanity_val_steps=0)
    model = Form()
    trainer.fit(model, regression_loader(32, 8), regression_loader(16, 8))
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    expected = {"optimizer": 0.1, "list": 0.1, "tuple_of_lists": 0.025, "dict_scheduler": 0.025,
                "dict_scheduler_config": 0.1 * 0.5**4}  # 8 steps, every 2nd  # fmt: skip
    if form == "plateau":
        assert lr <= 0.1
    else:
        assert lr == pytest.approx(expected[form])


def test_bad_configure_optimizers_is_explained():
    class Bad(BoringModel):
        def configure_optimizers(self):
            return "sgd"

    with pytest.raises(MisconfigurationError, match="Unknown configuration for model optimizers.*return one of: an optimizer"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(Bad(), regression_loader(16, 8))


def test_log_on_step_on_epoch_and_reductions():
    class Logs(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("both", float(batch_idx), on_step=True, on_epoch=True)
            self.log("total", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
            self.log("biggest", float(batch_idx), on_step=False, on_epoch=True, reduce_fx="max")
            self.log_dict({"a": 1.0, "b": 2.0})
            return super().training_step(batch, batch_idx)

    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(Logs(), regression_loader(32, 8))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["both_step"] == 3.0 and metrics["both_epoch"] == 1.5 and metrics["both"] == 1.5
    assert metrics["total"] == 4.0 and metrics["biggest"] == 3.0 and metrics["a"] == 1.0 and metrics["b"] == 2.0
    assert "train_loss" in trainer.progress_bar_metrics and "a" not in trainer.progress_bar_metrics


def test_log_rejects_what_is_not_a_scalar():
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("vector", torch.ones(3))
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"self.log\(vector, <tensor of shape \(3,\)>\)` was called"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(Bad(), regression_loader(16, 8))


def test_validate_and_test_return_one_dict_per_dataloader():
    trainer = Trainer(accelerator="cpu", **QUIET)
    model = BoringModel()
    [result] = trainer.validate(model, regression_loader(16, 8))
    assert set(result) == {"val_loss"}
    results = trainer.test(model, [regression_loader(16, 8), regression_loader(16, 4, seed=1)])
    assert [set(r) for r in results] == [{"test_loss/dataloader_idx_0"}, {"test_loss/dataloader_idx_1"}]
    predictions = trainer.predict(model, DataLoader(regression_data(16), batch_size=8))
    assert len(predictions) == 2 and predictions[0].shape == (8, 1)


def test_manual_optimization_uses_the_step_hooks():
    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.before_step = 0

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            loss = self._loss(batch)
            self.manual_backward(loss)
            opt.step()
            return loss

        def on_before_optimizer_step(self, optimizer):
            self.before_step += 1

    model = Manual()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(model, regression_loader(32, 8))
    assert trainer.global_step == 4 and model.before_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_several_optimizers_need_manual_optimization():
    class Two(BoringModel):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(MisconfigurationError, match="automatic_optimization = False"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(Two(), regression_loader(16, 8))


def test_buffers_follow_the_module_and_hparams_are_saved():
    class WithBuffer(BoringModel):
        def __init__(self, width: int = 3, name: str = "x"):
            super().__init__()
            self.save_hyperparameters()
            self.register_buffer("running", torch.zeros(width))

        def training_step(self, batch, batch_idx):
            self.running += 1
            assert self.running.device == self.device
            return super().training_step(batch, batch_idx)

    model = WithBuffer(width=5)
    # BoringModel's own save_hyperparameters() already saw the whole __init__ chain (as in Lightning)
    assert model.hparams == {"features": 4, "lr": 0.1, "width": 5, "name": "x"}
    Trainer(accelerator="cpu", **QUIET, max_steps=2).fit(model, regression_loader(16, 8))
    assert torch.equal(model.running, torch.full((5,), 2.0))


def test_datamodule_prepare_data_once_and_setup_per_stage():
    class Data(DataModule):
        def __init__(self):
            super().__init__()
            self.events = []

        def prepare_data(self):
            self.events.append("prepare_data")

        def setup(self, stage):
            self.events.append(f"setup:{stage}")

        def train_dataloader(self):
            return regression_loader(16, 8)

        def val_dataloader(self):
            return regression_loader(16, 8)

        def teardown(self, stage):
            self.events.append(f"teardown:{stage}")

    data = Data()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(BoringModel(), datamodule=data)
    assert data.events == ["prepare_data", "setup:fit", "teardown:fit"]
    with pytest.raises(MisconfigurationError, match="cannot pass train_dataloaders or val_dataloaders together with datamodule"):
        trainer.fit(BoringModel(), regression_loader(16, 8), datamodule=data)


def test_fit_needs_a_torchplug_module():
    with pytest.raises(MisconfigurationError, match=r"fit\(\)` requires a `LightningModule`: `model` must be a `LightningModule` \(a torchplug.Module\), got `Linear`"):
        Trainer(accelerator="cpu", **QUIET).fit(nn.Linear(2, 2), regression_loader(16, 8))
    with pytest.raises(TypeError):  # Lightning's class for it
        Trainer(accelerator="cpu", **QUIET).fit(nn.Linear(2, 2), regression_loader(16, 8))


def test_seed_everything_makes_runs_repeatable():
    def run():
        seed_everything(7)
        model = BoringModel()
        Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(model, DataLoader(regression_data(32), batch_size=8, shuffle=True))
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_true_precisions_cast_parameters_and_inputs():
    class Check(BoringModel):
        dtypes = []

        def training_step(self, batch, batch_idx):
            self.dtypes.append((batch[0].dtype, self.layer.weight.dtype))
            return super().training_step(batch, batch_idx)

    for precision, dtype in (("64-true", torch.float64), (64, torch.float64), ("bf16-true", torch.bfloat16)):
        model = Check()
        Check.dtypes = []
        Trainer(accelerator="cpu", **QUIET, max_steps=1, precision=precision).fit(model, regression_loader(16, 8))
        assert Check.dtypes == [(dtype, dtype)]
    trainer = Trainer(accelerator="cpu", **QUIET, precision=32)
    assert trainer.precision_name == "32-true"


def test_a_precision_that_replaces_the_module_is_refused():
    import copy

    from torchplug import hookimpl
    from torchplug.precision import Precision

    class Replacing(Precision):
        @hookimpl
        def torchplug_convert_module(self, trainer, module):
            return copy.deepcopy(module)

    with pytest.raises(MisconfigurationError, match="replaced the module in torchplug_convert_module"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1, precision=Replacing()).fit(BoringModel(), regression_loader(16, 8))


def test_overridden_optimizer_hooks_are_called_with_lightnings_arguments():
    """optimizer_step receives the epoch, the batch index, the optimizer handle and the closure; optimizer_zero_grad
    runs inside the closure on the first micro-batch of each accumulation window."""
    calls = []

    class Hooked(BoringModel):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            calls.append(("step", epoch, batch_idx, type(optimizer).__name__))
            optimizer.step(closure=optimizer_closure)

        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            calls.append(("zero_grad", epoch, batch_idx, type(optimizer).__name__))
            optimizer.zero_grad()

    model = Hooked()
    before = [p.detach().clone() for p in model.parameters()]
    Trainer(**QUIET, accelerator="cpu", max_steps=2, accumulate_grad_batches=2).fit(model, regression_loader(64, 8))
    assert calls == [
        ("zero_grad", 0, 0, "SGD"), ("step", 0, 1, "LightningSGD"),
        ("zero_grad", 0, 2, "SGD"), ("step", 0, 3, "LightningSGD"),
    ]  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------- steps by signature, steps set to None, modes
def test_steps_are_called_by_their_signature() -> None:
    seen = []

    class Signatures(BoringModel):
        def training_step(self, batch):
            seen.append("train")
            return super().training_step(batch, 0)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(("val", dataloader_idx))

    Trainer(accelerator="cpu", **QUIET, max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0).fit(
        Signatures(), regression_loader(16, 8), [regression_loader(8, 8), regression_loader(8, 8)]
    )
    assert seen == ["train", ("val", 0), ("val", 1)]

    class Requires(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx):
            pass

    with pytest.raises(RuntimeError, match=r"only a single `val_dataloader`.*`Requires.validation_step\(\)`"):
        Trainer(accelerator="cpu", **QUIET).validate(Requires(), regression_loader(8, 8))

    class Lacks(BoringModel):
        def on_test_batch_end(self, outputs, batch, batch_idx):
            pass

    with pytest.raises(RuntimeError, match=r"multiple `test_dataloader`.*`Lacks.on_test_batch_end\(\)`"):
        Trainer(accelerator="cpu", **QUIET).test(Lacks(), [regression_loader(8, 8), regression_loader(8, 8)])


def test_steps_set_to_none_on_the_instance() -> None:
    model = BoringModel()
    model.validation_step = None
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    with pytest.warns(UserWarning, match="val_dataloader` but have no `validation_step`"):
        trainer.fit(model, regression_loader(16, 8), regression_loader(8, 8))
    assert trainer.num_val_batches == []
    model.training_step = None
    with pytest.raises(MisconfigurationError, match=r"No `training_step\(\)` method defined"):
        Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(model, regression_loader(16, 8))


def test_a_none_batch_is_skipped_with_a_warning() -> None:
    outputs = []

    class Skips(BoringModel):
        def on_train_batch_end(self, out, batch, batch_idx):
            outputs.append(out is None)

    def collate(items):
        return None if items[0][0][0] > 0 else torch.utils.data.default_collate(items)

    loader = DataLoader(regression_data(8), batch_size=1, collate_fn=collate)
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    with pytest.warns(UserWarning, match="train_dataloader yielded None"):
        trainer.fit(Skips(), loader)
    assert trainer.global_step == outputs.count(False) and any(outputs)


def test_modes_the_user_set_are_kept_and_evaluation_runs_in_eval() -> None:
    seen = []

    class Frozen(BoringModel):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(2, 2).eval()

        def training_step(self, batch, batch_idx):
            seen.append(("train", self.training, self.frozen.training, self.trainer.model.training))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen.append(("val", self.training, self.trainer.model.training))

    model = Frozen()
    with pytest.warns(UserWarning, match=r"Found 1 module\(s\) in eval mode at the start of training \(frozen\)"):
        Trainer(accelerator="cpu", **QUIET, max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(
            model, regression_loader(8, 8), regression_loader(8, 8)
        )
    assert seen == [("val", False, False), ("train", True, False, True), ("val", False, False)]
    assert model.training and not model.frozen.training

    class OwnEval(BoringModel):
        def on_validation_model_eval(self):
            seen.append("own eval")

        def on_validation_model_train(self):
            seen.append("own train")

    seen.clear()
    Trainer(accelerator="cpu", **QUIET).validate(OwnEval(), regression_loader(8, 8))
    assert seen == ["own eval", "own train"]


# ---------------------------------------------------------------- members
def test_module_members() -> None:
    printed = []

    class Members(BoringModel):
        def __init__(self):
            super().__init__()
            self.example_input_array = torch.zeros(2, 4)

        def training_step(self, batch, batch_idx):
            gathered = self.all_gather({"a": torch.ones(3), "b": 2.0})
            assert gathered["a"].shape == (3,) and float(gathered["b"]) == 2.0  # one process: unchanged
            assert self.loggers == []
            self.print("hello", file=_Sink(printed))
            return super().training_step(batch, batch_idx)

    model = Members()
    Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(model, regression_loader(8, 8))
    assert printed == ["hello"]
    with pytest.deprecated_call():  # as in Lightning 2.7: TorchScript is deprecated in PyTorch
        scripted = model.to_torchscript()  # a module that ran with a trainer scripts
    assert torch.allclose(scripted(model.example_input_array), model(model.example_input_array))
    with pytest.deprecated_call():
        traced = model.to_torchscript(method="trace")
    assert torch.allclose(traced(model.example_input_array), model(model.example_input_array))
    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())


class _Sink:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        if text.strip():
            self.lines.append(text.strip())

    def flush(self):
        pass


def test_datamodule_from_datasets_and_str() -> None:
    data = DataModule.from_datasets(train_dataset=regression_data(8), val_dataset=[regression_data(4)], batch_size=4)
    assert len(data.train_dataloader()) == 2 and data.train_dataloader().batch_size == 4
    assert str(data).splitlines() == [
        "{Train dataloader: size=8}",
        "{Validation dataloader: 1. size=4}",
        "{Test dataloader: None}",
        "{Predict dataloader: None}",
    ]
