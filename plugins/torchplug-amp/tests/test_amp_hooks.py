"""The amp plugins' hooks, called through a real plugin manager with the core's defaults, on the CPU.

The Trainer runs them end to end in test_amp_trainer.py; here each hook's contract is pinned down in isolation.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from torchplug import MisconfigurationError, StepModule, registry
from torchplug._plugins import new_plugin_manager
from torchplug_amp import STATE_KEY, BF16MixedPrecision, MixedPrecision


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen = batch
        self.out = self.layer(batch)
        return self.out.float().pow(2).mean() * getattr(self, "factor", 1.0)


def _run(plugin, *, precision_name="16-mixed"):
    """A minimal stand-in for the Trainer's attributes that hooks read, on a real plugin manager."""
    pm = new_plugin_manager()
    pm.register(plugin, name=f"precision:{precision_name}")
    torch.manual_seed(0)
    net = _Net()
    trainer = types.SimpleNamespace(
        hook=pm.hook, plugin_manager=pm, root_device=torch.device("cpu"), accelerator_name="cpu",
        precision_name=precision_name, _wrapped_module=StepModule(net),
    )  # fmt: skip
    return trainer, net, torch.optim.SGD(net.parameters(), lr=0.1)


def _forward(trainer, batch):
    return trainer.hook.torchplug_forward(trainer=trainer, stage="train", args=(batch, 0))


def _closure(trainer, opt, batch):
    def closure():
        loss = _forward(trainer, batch)
        trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=opt)
        trainer.hook.torchplug_unscale_gradients(trainer=trainer, optimizer=opt)
        return loss

    return closure


@pytest.mark.parametrize(
    ("name", "cls"),
    [("16-mixed", MixedPrecision), (16, MixedPrecision), ("16", MixedPrecision), ("mixed", MixedPrecision),
     ("bf16-mixed", BF16MixedPrecision), ("bf16", BF16MixedPrecision)],
)  # fmt: skip
def test_entry_points_name_the_classes(name, cls):
    assert registry.load("precision", name) is cls


@pytest.mark.parametrize(
    ("plugin", "dtype"), [(MixedPrecision(), torch.float16), (BF16MixedPrecision(), torch.bfloat16)]
)
def test_forward_runs_under_autocast_and_leaves_parameters_and_inputs_alone(plugin, dtype):
    trainer, net, _ = _run(plugin)
    trainer.hook.torchplug_convert_module(trainer=trainer, module=net)
    batch = torch.randn(2, 4)
    _forward(trainer, batch)
    assert net.out.dtype == dtype
    assert net.seen is batch and batch.dtype == torch.float32
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the step
    assert net.layer(batch).dtype == torch.float32


def test_backward_scales_the_loss_and_unscale_restores_true_gradients():
    plugin = MixedPrecision()
    trainer, net, opt = _run(plugin)
    batch = torch.randn(8, 4)
    loss = _forward(trainer, batch)
    trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=opt)
    scaled = net.layer.weight.grad.clone()
    assert plugin.scaler.get_scale() == 2.0**16
    trainer.hook.torchplug_unscale_gradients(trainer=trainer, optimizer=opt)
    trainer.hook.torchplug_unscale_gradients(trainer=trainer, optimizer=opt)  # a second call is a no-op
    torch.testing.assert_close(net.layer.weight.grad, scaled / 2.0**16)

    reference = _Net()
    reference.load_state_dict(net.state_dict())
    with torch.autocast("cpu", dtype=torch.float16):
        ref_loss = reference.training_step(batch, 0)
    ref_loss.backward()
    torch.testing.assert_close(net.layer.weight.grad, reference.layer.weight.grad, rtol=1e-2, atol=1e-4)


def test_clipping_sees_unscaled_gradients_even_before_the_step_closure():
    plugin = MixedPrecision()
    trainer, net, opt = _run(plugin)
    loss = _forward(trainer, torch.randn(8, 4))
    trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=opt)
    # manual optimization: self.clip_gradients(opt, 0.01) before opt.step()
    trainer.hook.torchplug_clip_gradients(trainer=trainer, optimizer=opt, clip_val=0.01, algorithm="norm")
    norm = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
    assert norm == pytest.approx(0.01, rel=1e-3)
    # the step's own unscale must not divide a second time
    before = [p.detach().clone() for p in net.parameters()]
    assert trainer.hook.torchplug_optimizer_step(trainer=trainer, optimizer=opt, closure=lambda: None) is True
    moved = torch.cat(
        [(b - p.detach()).flatten() for b, p in zip(before, net.parameters(), strict=True)]
    ).norm()
    assert moved == pytest.approx(0.1 * 0.01, rel=1e-3)


def test_overflow_skips_the_step_halves_the_scale_and_says_so():
    plugin = MixedPrecision()
    trainer, net, opt = _run(plugin)
    batch = torch.randn(8, 4)
    before = [p.detach().clone() for p in net.parameters()]
    net.factor = 1e30
    took = trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, batch)
    )
    assert took is False
    assert plugin.scaler.get_scale() == 2.0**15
    for b, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(b, p)
    opt.zero_grad()
    net.factor = 1.0
    took = trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, batch)
    )
    assert took is True
    assert plugin.scaler.get_scale() == 2.0**15
    assert not torch.equal(before[0], net.layer.weight)


def test_a_step_without_gradients_steps_like_full_precision():
    plugin = MixedPrecision()
    trainer, net, opt = _run(plugin)
    # training_step returned None: the closure backpropagated nothing
    assert trainer.hook.torchplug_optimizer_step(trainer=trainer, optimizer=opt, closure=lambda: None) is True
    batch = torch.randn(8, 4)
    took = trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, batch)
    )
    assert took is True


def test_scaler_state_round_trips_through_plugin_state():
    plugin = MixedPrecision()
    trainer, net, opt = _run(plugin)
    net.factor = 1e30
    trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, torch.randn(8, 4))
    )
    states = {}
    for answer in trainer.hook.torchplug_state_dict(trainer=trainer):
        states.update(answer)
    assert states[STATE_KEY]["scaler"]["scale"] == 2.0**15

    resumed = MixedPrecision()
    trainer2, _, _ = _run(resumed)
    trainer2.hook.torchplug_convert_module(trainer=trainer2, module=trainer2._wrapped_module.module)
    trainer2.hook.torchplug_load_state_dict(trainer=trainer2, states=states)
    assert resumed.scaler.get_scale() == 2.0**15
    # a checkpoint of another precision leaves the fresh scale alone
    other = MixedPrecision()
    trainer3, _, _ = _run(other)
    trainer3.hook.torchplug_convert_module(trainer=trainer3, module=trainer3._wrapped_module.module)
    trainer3.hook.torchplug_load_state_dict(trainer=trainer3, states={"someone_else": {}})
    assert other.scaler.get_scale() == 2.0**16


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_a_user_scaler_is_used_and_checked():
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    plugin = MixedPrecision(scaler=scaler)
    trainer, net, opt = _run(plugin)
    loss = _forward(trainer, torch.randn(8, 4))
    trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=opt)
    assert plugin.scaler is scaler and scaler.get_scale() == 128.0
    with pytest.raises(MisconfigurationError, match=r"scaler=.*GradScaler"):
        MixedPrecision(scaler=object())
    with pytest.raises(MisconfigurationError, match=r"GradScaler\('cpu'\)"):
        plugin = MixedPrecision(scaler=torch.amp.GradScaler("cuda"))
        trainer, net, _ = _run(plugin)
        trainer.hook.torchplug_convert_module(trainer=trainer, module=net)


def test_closure_optimizers_are_refused_by_16_mixed_only():
    plugin = MixedPrecision()
    trainer, net, _ = _run(plugin)
    lbfgs = torch.optim.LBFGS(net.parameters())
    with pytest.raises(MisconfigurationError, match=r"precision='16-mixed' cannot step LBFGS.*'bf16-mixed'"):
        trainer.hook.torchplug_setup_optimizers(trainer=trainer, module=net, optimizers=[lbfgs])
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    assert trainer.hook.torchplug_setup_optimizers(trainer=trainer, module=net, optimizers=[sgd]) == (
        net,
        [sgd],
    )

    trainer, net, _ = _run(BF16MixedPrecision(), precision_name="bf16-mixed")
    lbfgs = torch.optim.LBFGS(net.parameters())
    assert trainer.hook.torchplug_setup_optimizers(trainer=trainer, module=net, optimizers=[lbfgs]) == (
        net,
        [lbfgs],
    )


def test_bf16_has_no_scaler_and_no_state():
    plugin = BF16MixedPrecision()
    trainer, net, opt = _run(plugin, precision_name="bf16-mixed")
    loss = _forward(trainer, torch.randn(8, 4))
    assert net.out.dtype == torch.bfloat16
    trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=opt)
    assert net.layer.weight.grad.dtype == torch.float32
    assert trainer.hook.torchplug_state_dict(trainer=trainer) == []


def test_a_device_type_without_autocast_is_refused():
    class NoAutocast:
        from torchplug import hookimpl

        @hookimpl
        def torchplug_autocast_device_type(self, trainer):
            return "meta"

    plugin = MixedPrecision()
    trainer, net, _ = _run(plugin)
    trainer.plugin_manager.register(NoAutocast())
    with pytest.raises(MisconfigurationError, match=r"precision='16-mixed'.*no autocast.*'meta'"):
        trainer.hook.torchplug_convert_module(trainer=trainer, module=net)


def test_a_used_instance_pickles_for_spawned_processes():
    import pickle

    plugin = MixedPrecision()
    trainer, net, opt = _run(plugin)
    net.factor = 1e30
    trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, torch.randn(8, 4))
    )
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.scaler.get_scale() == 2.0**15
