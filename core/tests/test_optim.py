"""configure_optimizers' forms and warnings, the optimizer handle (LightningOptimizer), when schedulers step.

How the core zeroes gradients (``Module.optimizer_zero_grad``, ``LightningOptimizer.zero_grad``, the training
closure): always ``optimizer.zero_grad()`` without arguments, the one call every optimizer wrapper accepts. NVIDIA
apex at O2 replaces ``zero_grad`` by a function that has no ``set_to_none`` parameter; the optimizers here get a
wrapper of that shape (torchplug-apex's tests check apex's own through its stand-in)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from torchplug import Callback, LightningOptimizer, MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader


def test_no_optimizer_warns_and_trains_without_one():
    class NoOptimizer(BoringModel):
        def configure_optimizers(self):
            return None

    model = NoOptimizer()
    before = model.layer.weight.detach().clone()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    with pytest.warns(UserWarning, match=r"configure_optimizers` returned `None`, this fit will run with no optimizer"):
        trainer.fit(model, regression_loader(16, 8))
    assert trainer.global_step == 2 and torch.equal(model.layer.weight, before) and trainer.optimizers == []


def test_plateau_forms_strictness_and_unknown_keys():
    class Plateau(BoringModel):
        def __init__(self, scheduler):
            super().__init__()
            self.scheduler = scheduler

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            if self.scheduler == "top-level monitor":
                return {"optimizer": opt, "lr_scheduler": plateau, "monitor": "train_loss"}
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "missing", "strict": False,
                                                       "unknown": 1}}  # fmt: skip

    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=3)
    trainer.fit(Plateau("top-level monitor"), regression_loader(16, 8))
    assert trainer.lr_scheduler_configs[0].monitor == "train_loss" and trainer.lr_scheduler_configs[0].reduce_on_plateau
    with pytest.warns(RuntimeWarning) as seen:
        Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(Plateau("not strict"), regression_loader(16, 8))
    messages = [str(w.message) for w in seen]
    assert any("unsupported keys in the lr scheduler dict: {'unknown'}" in m for m in messages)
    assert any("conditioned on metric missing which is not available but strict is set to `False`" in m
               for m in messages)  # fmt: skip

    class Missing(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt)]

    with pytest.raises(MisconfigurationError, match="must include a monitor when a `ReduceLROnPlateau`"):
        Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(Missing(), regression_loader(16, 8))


class Sam(torch.optim.SGD):
    """A SAM-like optimizer: its step needs the closure (called between two updates) and takes a keyword."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.seen = []

    def step(self, closure=None, rho=None):
        assert closure is not None
        self.seen.append(rho)
        closure()
        return super().step()


def test_the_handle_is_lightnings_optimizer_and_always_passes_the_closure():
    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            assert isinstance(opt, LightningOptimizer) and isinstance(opt, Sam) and repr(opt).startswith("LightningSam")
            assert opt.param_groups is opt.optimizer.param_groups

            def closure():
                loss = self._loss(batch)
                opt.zero_grad()
                self.manual_backward(loss)
                return loss

            opt.step(closure=closure, rho=0.05)

        def configure_optimizers(self):
            return Sam(self.parameters())

    model = Manual()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(model, regression_loader(16, 8))
    assert trainer.optimizers[0].seen == [0.05, 0.05] and trainer.global_step == 2

    class Automatic(BoringModel):
        def configure_optimizers(self):
            return Sam(self.parameters())

    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(Automatic(), regression_loader(16, 8))
    assert trainer.optimizers[0].seen == [None, None]

    plain = LightningOptimizer(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()))
    assert isinstance(plain, torch.optim.Adam) and plain.state is plain.optimizer.state

    class NoClosure(BoringModel):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            pass

    with pytest.raises(MisconfigurationError, match="The closure hasn't been executed"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(NoClosure(), regression_loader(16, 8))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_torchs_optimizers_train_exactly_as_when_step_runs_the_closure(name):
    """torch's own optimizers get their closure called just before ``step()`` (no grad-mode context per step): the
    weights are bitwise those of a hand-written loop that passes the closure to ``step``."""

    def make(module):
        return getattr(torch.optim, name)(module.parameters(), lr=0.05)

    class Model(BoringModel):
        def configure_optimizers(self):
            return make(self)

    torch.manual_seed(0)
    model = Model()
    torch.manual_seed(0)
    reference = BoringModel()
    optimizer = make(reference)
    for batch in regression_loader(64, 8):

        def closure(batch=batch):
            optimizer.zero_grad()
            loss = reference._loss(batch)
            loss.backward()
            return loss

        optimizer.step(closure)
    Trainer(**QUIET, accelerator="cpu", max_epochs=1).fit(model, regression_loader(64, 8))
    for got, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(got, expected)


def test_optimizer_step_pre_hooks_still_run_before_the_closure():
    """A step pre-hook (the optimizer's own or torch's global one) runs before the forward, as in ``step(closure)``."""
    events = []

    class Model(BoringModel):
        def __init__(self, own_hook):
            super().__init__()
            self.own_hook = own_hook

        def training_step(self, batch, batch_idx):
            events.append("closure")
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            if self.own_hook:
                optimizer.register_step_pre_hook(lambda *args: events.append("pre"))
            optimizer.register_step_post_hook(lambda *args: events.append("post"))
            return optimizer

    Trainer(**QUIET, accelerator="cpu", max_steps=2).fit(Model(own_hook=True), regression_loader(16, 8))
    assert events == ["pre", "closure", "post"] * 2
    events.clear()
    handle = register_optimizer_step_pre_hook(lambda *args: events.append("global"))
    try:
        Trainer(**QUIET, accelerator="cpu", max_steps=2).fit(Model(own_hook=False), regression_loader(16, 8))
    finally:
        handle.remove()
    assert events == ["global", "closure", "post"] * 2
    events.clear()
    Trainer(**QUIET, accelerator="cpu", max_steps=2).fit(Model(own_hook=False), regression_loader(16, 8))
    assert events == ["closure", "post"] * 2


def test_schedulers_step_at_lightnings_times():
    """Epoch schedulers step after the epoch's last batch (a checkpoint in on_train_batch_end sees it), plateau ones
    after the epoch-end hooks; an epoch cut short by max_steps steps neither."""
    seen = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(("batch_end", batch_idx, trainer.optimizers[0].param_groups[0]["lr"]))

        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(("epoch_end", trainer.optimizers[0].param_groups[0]["lr"]))

    class Step(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    Trainer(accelerator="cpu", **QUIET, max_epochs=1, callbacks=[Watch()]).fit(Step(), regression_loader(16, 8))
    assert seen == [("batch_end", 0, 1.0), ("batch_end", 1, 0.5), ("epoch_end", 0.5)]
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1)
    trainer.fit(Step(), regression_loader(16, 8))
    assert trainer.optimizers[0].param_groups[0]["lr"] == 1.0


def _wrapped(optimizer: torch.optim.Optimizer, calls: list[torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """``optimizer`` whose ``zero_grad`` takes no arguments, as an optimizer wrapper may install it."""
    own = optimizer.zero_grad

    def zero_grad(self):
        calls.append(self)
        own()

    optimizer.zero_grad = types.MethodType(zero_grad, optimizer)
    return optimizer


class _Net(BoringModel):
    def __init__(self, optimizer: str = "sgd", manual: bool = False) -> None:
        super().__init__()
        self.kind, self.automatic_optimization = optimizer, not manual
        self.zero_grad_calls: list[torch.optim.Optimizer] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        for opt in self.optimizers():
            opt.zero_grad()
            self.manual_backward(self._loss(batch))
            opt.step()
        return None

    def configure_optimizers(self) -> Any:
        calls = self.zero_grad_calls
        if self.kind == "lbfgs":
            return _wrapped(torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3), calls)
        if not self.automatic_optimization:
            return [_wrapped(torch.optim.SGD(self.parameters(), lr=0.01), calls) for _ in range(2)]
        return _wrapped(torch.optim.SGD(self.parameters(), lr=0.1), calls)


@pytest.mark.parametrize(
    "case, expected",
    [("automatic", 3), ("accumulating", 3), ("lbfgs", None), ("manual", 4)],
)
def test_every_path_zeroes_gradients_with_a_call_every_wrapper_accepts(case, expected):
    model = _Net(optimizer="lbfgs" if case == "lbfgs" else "sgd", manual=case == "manual")
    closure_calls = []
    if case == "lbfgs":  # LBFGS evaluates the closure several times per step: each evaluation zeroes again
        original = model.training_step
        model.training_step = lambda batch, batch_idx: closure_calls.append(1) or original(batch, batch_idx)
    trainer = Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=2 if case == "accumulating" else 1,
                      **QUIET)  # fmt: skip
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    if case == "lbfgs":
        expected = len(closure_calls)
        assert expected > 3
    assert len(model.zero_grad_calls) == expected
    assert all(opt in trainer.optimizers for opt in model.zero_grad_calls)
    if case == "manual":
        # two optimizers stepped per batch: max_steps=3 stops after the second batch (optimizer steps count)
        assert trainer.global_step == 4 and set(map(id, model.zero_grad_calls)) == set(map(id, trainer.optimizers))


def test_a_handle_passes_set_to_none_false_to_the_optimizer():
    """``self.optimizers().zero_grad(set_to_none=False)`` keeps zero-filled gradients, as torch's optimizer does;
    without arguments the optimizer's own default applies."""
    seen: dict[str, Any] = {}

    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            self.manual_backward(self._loss(batch))
            opt.zero_grad(set_to_none=False)
            seen["kept"] = self.layer.weight.grad.clone()
            self.manual_backward(self._loss(batch))
            opt.zero_grad()
            seen["default"] = self.layer.weight.grad

    Trainer(accelerator="cpu", max_epochs=1, **QUIET).fit(Manual(), regression_loader(n=8, batch_size=8))
    assert seen["kept"] is not None and not seen["kept"].any()
    assert seen["default"] is None  # torch's own default: set_to_none=True
