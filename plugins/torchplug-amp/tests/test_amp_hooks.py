"""The amp plugins' contract, each part in isolation, through a real Trainer on the CPU.

The plugins are registered as the Trainer registers them (checked, with the core's defaults, the CPU accelerator and
the single-device strategy); the per-batch parts are the run's :class:`torchplug.StepOps` exactly as the loop holds
them (``trainer._loop.ops``), called by each check from inside a running ``fit`` once setup is done. Whole training
runs are in test_amp_trainer.py.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch import nn

import torchplug._step
from torchplug import Callback, MisconfigurationError, Module, Trainer, registry
from torchplug._plugins import check_plugin
from torchplug.accelerators.cpu import CPUAccelerator
from torchplug.testing import QUIET, regression_loader
from torchplug_amp import STATE_KEY, BF16MixedPrecision, MixedPrecision


class _Net(Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.factor = 1.0
        self.backward_losses: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen = batch
        self.out = self.layer(batch)
        return self.out.float().pow(2).mean() * self.factor

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.backward_losses.append(loss.detach().clone())
        super().backward(loss, *args, **kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _in_a_run(precision: Any, check: Callable[..., Any]) -> Any:
    """Fit a fresh ``_Net`` on the CPU and call ``check(trainer, net, ops, opt)`` once the run is set up, before any
    batch (``on_train_start``; ``limit_train_batches=0``, so the loop itself trains nothing): ``ops`` are the run's
    step operations as the loop calls them, ``opt`` its optimizer. Returns what ``check`` returned."""
    returned = []

    class Check(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
            returned.append(check(trainer, pl_module, trainer._loop.ops, trainer.optimizers[0]))

    torch.manual_seed(0)
    trainer = Trainer(
        accelerator="cpu", precision=precision, callbacks=[Check()], max_epochs=1, limit_train_batches=0,
        **QUIET,
    )  # fmt: skip
    trainer.fit(_Net(), regression_loader(n=8, batch_size=8))
    assert len(returned) == 1, "the check did not run"
    return returned[0]


def _forward(ops: torchplug.StepOps, batch: torch.Tensor) -> torch.Tensor:
    return ops.forward("train", (batch, 0))


def _closure(ops: torchplug.StepOps, opt: torch.optim.Optimizer, batch: torch.Tensor) -> Callable[[], Any]:
    """What the loop's closure does for one micro-batch: forward, backward, then the gradients made final."""

    def closure() -> torch.Tensor:
        loss = _forward(ops, batch)
        ops.backward(loss, opt)
        ops.prepare_gradients(opt)
        return loss

    return closure


@pytest.mark.parametrize(
    ("name", "cls"),
    [("16-mixed", MixedPrecision), (16, MixedPrecision), ("16", MixedPrecision), ("mixed", MixedPrecision),
     ("bf16-mixed", BF16MixedPrecision), ("bf16", BF16MixedPrecision)],
)  # fmt: skip
def test_entry_points_name_the_classes(name, cls):
    assert registry.load("precision", name) is cls
    assert check_plugin(cls) == []  # what registration checks: each hook exists, is marked, takes its arguments


@pytest.mark.parametrize(
    ("cls", "dtype"), [(MixedPrecision, torch.float16), (BF16MixedPrecision, torch.bfloat16)]
)
def test_forward_runs_under_autocast_and_leaves_parameters_and_inputs_alone(cls, dtype):
    def check(trainer, net, ops, opt):
        batch = ops.to_device(torch.randn(2, 4))
        assert batch.dtype == torch.float32
        for _ in range(2):  # the autocast context is made once per run and entered for every step
            _forward(ops, batch)
            assert net.out.dtype == dtype
            assert net.seen is batch and batch.dtype == torch.float32
            assert not torch.is_autocast_enabled("cpu")  # the context ends with the step
        assert {p.dtype for p in net.parameters()} == {torch.float32}
        assert net.layer(batch).dtype == torch.float32

    _in_a_run(cls(), check)


def test_backward_scales_the_loss_and_unscale_restores_true_gradients():
    plugin = MixedPrecision()

    def check(trainer, net, ops, opt):
        batch = torch.randn(8, 4)
        loss = _forward(ops, batch)
        ops.backward(loss, opt)
        assert plugin.scaler.get_scale() == 2.0**16
        [scaled_loss] = net.backward_losses  # the scaled loss goes through the module's own backward
        torch.testing.assert_close(scaled_loss, loss.detach() * 2.0**16)
        scaled = net.layer.weight.grad.clone()
        ops.prepare_gradients(opt)
        ops.prepare_gradients(opt)  # a second call is a no-op
        torch.testing.assert_close(net.layer.weight.grad, scaled / 2.0**16)

        reference = _Net()
        reference.load_state_dict(net.state_dict())
        with torch.autocast("cpu", dtype=torch.float16):
            ref_loss = reference.training_step(batch, 0)
        ref_loss.backward()
        torch.testing.assert_close(net.layer.weight.grad, reference.layer.weight.grad, rtol=1e-2, atol=1e-4)

    _in_a_run(plugin, check)


def test_clipping_sees_unscaled_gradients_even_before_the_step_closure():
    def check(trainer, net, ops, opt):
        ops.backward(_forward(ops, torch.randn(8, 4)), opt)
        # manual optimization: self.clip_gradients(opt, 0.01) before opt.step()
        ops.clip_gradients(opt, 0.01, "norm")
        norm = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
        assert norm == pytest.approx(0.01, rel=1e-3)
        # neither the closure's prepare_gradients nor the step's own unscale may divide a second time
        before = [p.detach().clone() for p in net.parameters()]
        assert ops.optimizer_step(opt, lambda: ops.prepare_gradients(opt)) is True
        moved = torch.cat(
            [(b - p.detach()).flatten() for b, p in zip(before, net.parameters(), strict=True)]
        ).norm()
        assert moved == pytest.approx(0.1 * 0.01, rel=1e-3)

    _in_a_run(MixedPrecision(), check)


def test_overflow_skips_the_step_halves_the_scale_and_says_so():
    plugin = MixedPrecision()

    def check(trainer, net, ops, opt):
        batch = torch.randn(8, 4)
        before = [p.detach().clone() for p in net.parameters()]
        net.factor = 1e30
        assert ops.optimizer_step(opt, _closure(ops, opt, batch)) is False
        assert plugin.scaler.get_scale() == 2.0**15
        for b, p in zip(before, net.parameters(), strict=True):
            assert torch.equal(b, p)
        opt.zero_grad()
        net.factor = 1.0
        assert ops.optimizer_step(opt, _closure(ops, opt, batch)) is True
        assert plugin.scaler.get_scale() == 2.0**15
        assert not torch.equal(before[0], net.layer.weight)

    _in_a_run(plugin, check)


def test_a_step_without_gradients_steps_like_full_precision():
    def check(trainer, net, ops, opt):
        # training_step returned None: the closure backpropagated nothing
        assert ops.optimizer_step(opt, lambda: None) is True
        assert ops.optimizer_step(opt, _closure(ops, opt, torch.randn(8, 4))) is True

    _in_a_run(MixedPrecision(), check)


def _plugin_states(trainer: Trainer) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for answer in trainer.hook.torchplug_state_dict(trainer=trainer):
        states.update(answer or {})
    return states


def test_scaler_state_round_trips_through_plugin_state():
    def overflow_once(trainer, net, ops, opt):
        net.factor = 1e30
        ops.optimizer_step(opt, _closure(ops, opt, torch.randn(8, 4)))
        return _plugin_states(trainer)

    states = _in_a_run(MixedPrecision(), overflow_once)
    assert states[STATE_KEY]["scaler"]["scale"] == 2.0**15

    def load(states):
        def check(trainer, net, ops, opt):
            # the core hands this rank's saved states over read-only, after setup
            trainer.hook.torchplug_load_state_dict(trainer=trainer, states=MappingProxyType(states))

        return check

    resumed = MixedPrecision()
    _in_a_run(resumed, load(states))
    assert resumed.scaler.get_scale() == 2.0**15
    # a checkpoint of another precision, or of a disabled scaler, leaves the fresh scale alone
    for other_states in ({"someone_else": {}}, {STATE_KEY: {"scaler": {}}}):
        other = MixedPrecision()
        _in_a_run(other, load(other_states))
        assert other.scaler.get_scale() == 2.0**16


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_a_user_scaler_is_used_and_checked():
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    plugin = MixedPrecision(scaler=scaler)

    def check(trainer, net, ops, opt):
        loss = _forward(ops, torch.randn(8, 4))
        ops.backward(loss, opt)
        scaled = net.layer.weight.grad.clone()
        ops.prepare_gradients(opt)
        torch.testing.assert_close(net.layer.weight.grad, scaled / 128.0)

    _in_a_run(plugin, check)
    assert plugin.scaler is scaler and scaler.get_scale() == 128.0
    with pytest.raises(MisconfigurationError, match=r"scaler=.*GradScaler"):
        MixedPrecision(scaler=object())
    with pytest.raises(MisconfigurationError, match=r"GradScaler\('cpu'\)"):
        _in_a_run(MixedPrecision(scaler=torch.amp.GradScaler("cuda")), lambda *args: None)


def test_closure_optimizers_are_refused_by_16_mixed_only():
    net = _Net()
    trainer = Trainer(accelerator="cpu", precision="16-mixed", **QUIET)
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    lbfgs = torch.optim.LBFGS(net.parameters())
    with pytest.raises(MisconfigurationError, match=r"precision='16-mixed' cannot step LBFGS.*'bf16-mixed'"):
        trainer.hook.torchplug_setup_optimizers(trainer=trainer, module=net, optimizers=[lbfgs])
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    assert trainer.hook.torchplug_setup_optimizers(trainer=trainer, module=net, optimizers=[sgd]) == (
        net,
        [sgd],
    )

    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", **QUIET)
    assert isinstance(trainer.precision_plugin, BF16MixedPrecision)
    assert trainer.hook.torchplug_setup_optimizers(trainer=trainer, module=net, optimizers=[lbfgs]) == (
        net,
        [lbfgs],
    )


def test_bf16_has_no_scaler_and_no_state():
    plugin = BF16MixedPrecision()

    def check(trainer, net, ops, opt):
        batch = torch.randn(8, 4)
        loss = _forward(ops, batch)
        assert net.out.dtype == torch.bfloat16
        ops.backward(loss, opt)
        assert net.layer.weight.grad.dtype == torch.float32
        # the gradients are the true ones: nothing scaled the loss
        reference = _Net()
        reference.load_state_dict(net.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference.training_step(batch, 0).backward()
        torch.testing.assert_close(net.layer.weight.grad, reference.layer.weight.grad)
        # the step is full precision's, which steps closure optimizers (LBFGS) too
        assert inspect.unwrap(ops.optimizer_step) is torchplug._step.optimizer_step  # (traced or not)
        # nothing to checkpoint: the plugin answers torchplug_state_dict with nothing
        assert plugin.torchplug_state_dict(trainer) is None
        assert STATE_KEY not in _plugin_states(trainer)

    _in_a_run(plugin, check)
    assert plugin.scaler is None  # as Lightning's MixedPrecision("bf16-mixed", ...)


def test_a_device_type_without_autocast_is_refused():
    class MetaAccelerator(CPUAccelerator):
        device_type = "meta"  # torch has no autocast for it

    with pytest.raises(
        MisconfigurationError,
        match=r"precision='16-mixed'.*no autocast.*'meta'.*accelerator='MetaAccelerator'",
    ):
        Trainer(accelerator=MetaAccelerator(), precision="16-mixed", **QUIET)  # refused before any run


def test_a_used_instance_pickles_for_spawned_processes():
    plugin = MixedPrecision()

    def check(trainer, net, ops, opt):
        net.factor = 1e30
        ops.optimizer_step(opt, _closure(ops, opt, torch.randn(8, 4)))

    _in_a_run(plugin, check)
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.scaler.get_scale() == 2.0**15


def test_the_compute_dtype_capability_names_the_autocast_dtype() -> None:
    """What a sharding strategy gathers parameters in (torchplug.precision.Precision.compute_dtype)."""
    from torchplug.precision import Precision
    from torchplug.precision.true import BFloat16Precision, FullPrecision

    assert (MixedPrecision.compute_dtype, BF16MixedPrecision.compute_dtype) == (torch.float16, torch.bfloat16)
    assert MixedPrecision().compute_dtype == MixedPrecision.dtype  # the dtype autocast computes in
    # full precision and the *-true ones convert the parameters themselves: nothing to gather in another dtype
    assert Precision.compute_dtype is FullPrecision.compute_dtype is BFloat16Precision.compute_dtype is None
