"""How the core zeroes gradients (``Module.optimizer_zero_grad``, ``OptimizerHandle.zero_grad``, the training
closure): always ``optimizer.zero_grad()`` without arguments, the one call every optimizer wrapper accepts. NVIDIA
apex at O2 replaces ``zero_grad`` by a function that has no ``set_to_none`` parameter; the optimizers here get a
wrapper of that shape (torchplug-apex's tests check apex's own through its stand-in)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from torchplug import Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader


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
