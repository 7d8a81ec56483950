"""torchplug-apex against a recording stand-in for ``apex.amp`` (tests/apex_standin/apex/amp.py), on the CPU.

CI has no GPU and cannot install NVIDIA apex; the stand-in records calls and imitates apex's loss scaling, so
these tests check what the plugin asks of apex and in which order. The CUDA check is bypassed only through the
plugin's documented test seam, ``ApexPrecision.supported_accelerators``. Real apex runs in test_apex_gpu.py.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from torchplug import MisconfigurationError, Module, StepModule, Trainer, hookimpl, registry
from torchplug._plugins import new_plugin_manager
from torchplug.testing import QUIET, regression_loader
from torchplug_apex import STATE_KEY, ApexPrecision, find_amp

STANDIN = Path(__file__).parent / "apex_standin"


def _forget_apex() -> None:
    for name in [m for m in sys.modules if m == "apex" or m.startswith("apex.")]:
        del sys.modules[name]


@pytest.fixture
def amp(monkeypatch):
    """The stand-in as ``apex.amp``, and the plugin's test seam opened to the CPU."""
    _forget_apex()
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setattr(ApexPrecision, "supported_accelerators", ("cuda", "gpu", "cpu"))
    import apex.amp

    apex.amp.reset()
    yield apex.amp
    _forget_apex()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean() * getattr(self, "factor", 1.0)


def _run(plugin, accelerator="cpu", n_optimizers=1):
    pm = new_plugin_manager()
    pm.register(plugin, name="precision:apex")
    torch.manual_seed(0)
    net = _Net()
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.1) for _ in range(n_optimizers)]
    trainer = types.SimpleNamespace(
        hook=pm.hook, plugin_manager=pm, root_device=torch.device("cpu"), accelerator_name=accelerator,
        precision_name="apex", is_global_zero=True, _wrapped_module=StepModule(net), optimizers=optimizers,
    )  # fmt: skip
    return trainer, net


def _setup(trainer, net):
    trainer.hook.torchplug_configure(trainer=trainer)
    module, trainer.optimizers = trainer.hook.torchplug_setup_optimizers(
        trainer=trainer, module=net, optimizers=trainer.optimizers
    )
    return module


def _closure(trainer, opt, batch):
    def closure():
        loss = trainer.hook.torchplug_forward(trainer=trainer, stage="train", args=(batch, 0))
        trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=opt)
        return loss

    return closure


def test_entry_point_and_opt_levels():
    assert registry.load("precision", "apex") is ApexPrecision
    assert ApexPrecision().amp_level == "O2"
    assert ApexPrecision(amp_level="o1").amp_level == "O1"
    with pytest.raises(MisconfigurationError, match=r"amp_level='O4'.*'O0', 'O1', 'O2', 'O3'"):
        ApexPrecision(amp_level="O4")
    with pytest.raises(MisconfigurationError, match=r"amp_level='02'.*the letter O, not zero"):
        ApexPrecision(amp_level="02")


def test_a_non_cuda_accelerator_is_refused_without_the_test_seam(amp):
    trainer, _ = _run(ApexPrecision())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ApexPrecision, "supported_accelerators", ("cuda", "gpu"))
        with pytest.raises(
            MisconfigurationError, match=r"needs accelerator='gpu'.*accelerator='cpu'.*'16-mixed'"
        ):
            trainer.hook.torchplug_configure(trainer=trainer)


def test_missing_apex_explains_how_to_install_25_04(monkeypatch, tmp_path):
    _forget_apex()
    monkeypatch.setitem(sys.modules, "apex", None)
    assert find_amp()[0] is None and not ApexPrecision.is_available()
    trainer, _ = _run(ApexPrecision(), accelerator="cuda")
    with pytest.raises(MisconfigurationError) as err:
        trainer.hook.torchplug_configure(trainer=trainer)
    message = str(err.value)
    assert "importing apex.amp failed" in message
    assert "--branch 25.04" in message and "--no-build-isolation" in message and "16-mixed" in message


def test_an_unrelated_package_named_apex_is_not_mistaken_for_nvidia_apex(monkeypatch, tmp_path):
    # the PyPI 'apex' (a web toolkit) installs a top-level apex without amp; a stripped apex may have amp
    # without initialize
    (tmp_path / "apex").mkdir()
    (tmp_path / "apex" / "__init__.py").write_text("")
    _forget_apex()
    monkeypatch.syspath_prepend(str(tmp_path))
    amp, why = find_amp()
    assert amp is None and "No module named 'apex.amp'" in why
    (tmp_path / "apex" / "amp.py").write_text("def scale_loss(): ...\n")
    _forget_apex()
    amp, why = find_amp()
    assert amp is None and "has no amp.initialize" in why
    _forget_apex()


def test_a_configured_instance_pickles_for_spawned_processes(amp):
    plugin = ApexPrecision(amp_level="O3")
    trainer, _ = _run(plugin)
    trainer.hook.torchplug_configure(trainer=trainer)
    assert plugin.amp is amp
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.amp_level == "O3" and copy.amp is None
    assert plugin.amp is amp


def test_initialize_once_with_every_optimizer_and_a_loss_scale_each(amp):
    plugin = ApexPrecision(amp_level="O1")
    trainer, net = _run(plugin, n_optimizers=2)
    given = list(trainer.optimizers)
    assert _setup(trainer, net) is net
    [(name, call)] = amp.calls
    assert name == "initialize"
    assert call["models"] == [net] and call["optimizers"] == given
    assert call["opt_level"] == "O1" and call["num_losses"] == 2
    # the second fit in one process: apex allows one amp.initialize
    trainer2, net2 = _run(ApexPrecision(amp_level="O1"))
    with pytest.raises(MisconfigurationError, match=r"already ran in this process \(opt level O1\)"):
        _setup(trainer2, net2)


def test_closure_optimizers_are_refused(amp):
    trainer, net = _run(ApexPrecision())
    trainer.optimizers = [torch.optim.LBFGS(net.parameters())]
    with pytest.raises(MisconfigurationError, match=r"precision='apex' cannot step LBFGS"):
        _setup(trainer, net)
    assert amp.calls == []


def test_backward_goes_through_scale_loss_with_the_optimizer_s_loss_id(amp):
    trainer, net = _run(ApexPrecision(), n_optimizers=2)
    _setup(trainer, net)
    batch = torch.randn(8, 4)
    second = trainer.optimizers[1]
    trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=second, closure=_closure(trainer, second, batch)
    )
    scale_calls = [call for name, call in amp.calls if name == "scale_loss"]
    assert scale_calls == [{"optimizers": [second], "loss_id": 1, "scale": 2.0**16}]
    assert [name for name, _ in amp.calls][-1] == "step"
    # manual_backward(loss) without an optimizer: every optimizer, the first loss scale
    loss = trainer.hook.torchplug_forward(trainer=trainer, stage="train", args=(batch, 0))
    trainer.hook.torchplug_backward(trainer=trainer, loss=loss, optimizer=None)
    assert amp.calls[-1] == ("scale_loss", {"optimizers": trainer.optimizers, "loss_id": 0, "scale": 2.0**16})


def test_an_overflow_skips_exactly_that_step(amp):
    trainer, net = _run(ApexPrecision())
    _setup(trainer, net)
    [opt] = trainer.optimizers
    batch = torch.randn(8, 4)
    before = [p.detach().clone() for p in net.parameters()]
    net.factor = float("inf")
    took = trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, batch)
    )
    assert took is False
    assert [name for name, _ in amp.calls][-1] == "skipped_step"
    assert all(torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    assert amp.loss_scalers[0].loss_scale == 2.0**15
    opt.zero_grad()
    net.factor = 1.0
    took = trainer.hook.torchplug_optimizer_step(
        trainer=trainer, optimizer=opt, closure=_closure(trainer, opt, batch)
    )
    assert took is True
    assert not torch.equal(before[0], net.layer.weight)


def test_clipping_uses_apex_master_params(amp, monkeypatch):
    trainer, net = _run(ApexPrecision())
    _setup(trainer, net)
    [opt] = trainer.optimizers
    _closure(trainer, opt, torch.randn(8, 4))()
    asked = []
    real = amp.master_params
    monkeypatch.setattr(amp, "master_params", lambda o: asked.append(o) or real(o))
    assert trainer.hook.torchplug_clip_gradients(
        trainer=trainer, optimizer=opt, clip_val=1e-3, algorithm="norm"
    )
    assert asked == [opt]
    assert torch.cat([p.grad.flatten() for p in net.parameters()]).norm() == pytest.approx(1e-3, rel=1e-3)
    trainer.hook.torchplug_clip_gradients(trainer=trainer, optimizer=opt, clip_val=1e-5, algorithm="value")
    assert max(p.grad.abs().max() for p in net.parameters()) <= 1e-5


def test_state_round_trip_and_another_opt_level_refused(amp):
    trainer, net = _run(ApexPrecision())
    _setup(trainer, net)
    amp.loss_scalers[0].loss_scale, amp.loss_scalers[0].unskipped = 1024.0, 7
    states = {}
    for answer in trainer.hook.torchplug_state_dict(trainer=trainer):
        states.update(answer)
    assert states == {
        STATE_KEY: {"opt_level": "O2", "amp": {"loss_scaler0": {"loss_scale": 1024.0, "unskipped": 7}}}
    }

    del amp._torchplug_opt_level  # a new process
    amp.reset()
    trainer, net = _run(ApexPrecision())
    _setup(trainer, net)
    trainer.hook.torchplug_load_state_dict(trainer=trainer, states=states)
    assert (amp.loss_scalers[0].loss_scale, amp.loss_scalers[0].unskipped) == (1024.0, 7)

    del amp._torchplug_opt_level
    trainer, net = _run(ApexPrecision(amp_level="O1"))
    _setup(trainer, net)
    with pytest.raises(
        MisconfigurationError, match=r"amp_level='O1'.*opt level 'O2'.*Resume with amp_level='O2'"
    ):
        trainer.hook.torchplug_load_state_dict(trainer=trainer, states=states)


# ------------------------------------------------------------------------------------------------ through the Trainer


class _ApexNet(Module):
    def __init__(self, amp_module, overflow_at=None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.amp_module, self.overflow_at = amp_module, overflow_at
        self.losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        return loss * float("inf") if self.global_step == self.overflow_at else loss

    def configure_optimizers(self):
        self.amp_module.calls.append(("configure_optimizers", {}))
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _OrderRecorder:
    """An extra plugin that notes when the strategy wraps the module."""

    def __init__(self, amp_module) -> None:
        self.amp_module = amp_module

    @hookimpl(tryfirst=True)
    def torchplug_wrap_module(self, trainer, module):
        self.amp_module.calls.append(("wrap_module", {}))


# apex replaces optimizer.step after the LR scheduler wrapped it, and torch warns on the first scheduler step
_step_replaced = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")


def _apex_trainer(amp_module, **kwargs):
    return Trainer(accelerator="cpu", plugins=[_OrderRecorder(amp_module)], **{**QUIET, **kwargs})


def test_legacy_flags_select_apex_with_its_opt_level(amp):
    trainer = Trainer(accelerator="cpu", precision=16, amp_level="O1", **QUIET)
    assert trainer.precision_name == "apex" and trainer.precision_plugin.amp_level == "O1"
    with pytest.warns(DeprecationWarning, match="amp_backend"):
        trainer = Trainer(accelerator="cpu", precision=16, amp_backend="apex", **QUIET)
    assert isinstance(trainer.precision_plugin, ApexPrecision) and trainer.precision_plugin.amp_level == "O2"
    with pytest.raises(MisconfigurationError, match=r"amp_level.*bf16"):
        Trainer(accelerator="cpu", precision="bf16", amp_level="O2", **QUIET)


@_step_replaced
def test_fit_calls_apex_in_the_order_it_needs(amp):
    model = _ApexNet(amp, overflow_at=2)
    trainer = _apex_trainer(amp, precision="apex", amp_level="O2", max_steps=4)
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    names = [name for name, _ in amp.calls]
    assert names[:3] == ["configure_optimizers", "initialize", "wrap_module"]
    assert names[3:] == ["scale_loss", "step"] * 2 + ["scale_loss", "skipped_step"] + ["scale_loss", "step"]
    init = amp.calls[1][1]
    assert init["models"] == [model] and init["optimizers"] == trainer.optimizers
    assert init["opt_level"] == "O2" and init["num_losses"] == 1
    assert init["param_devices"] == {trainer.root_device}
    assert trainer.lr_scheduler_configs[0].scheduler.optimizer is trainer.optimizers[0]
    # the skipped step did not advance the scheduler: three of four steps taken
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert amp.loss_scalers[0].loss_scale == 2.0**15


@_step_replaced
def test_resume_loads_apex_state_last_and_refuses_another_opt_level(amp, tmp_path, monkeypatch):
    model = _ApexNet(amp, overflow_at=1)
    trainer = _apex_trainer(amp, precision="apex", max_steps=3)
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    path = tmp_path / "apex.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert saved["plugins"][STATE_KEY] == {
        "opt_level": "O2", "amp": {"loss_scaler0": {"loss_scale": 2.0**15, "unskipped": 1}},
    }  # fmt: skip

    del amp._torchplug_opt_level  # a new process
    amp.reset()
    resumed_model = _ApexNet(amp)
    seen = {}
    real_load = amp.load_state_dict

    def load_state_dict(state):
        # by now the core must have restored the module and the optimizer
        seen["weight"] = resumed_model.net[0].weight.detach().clone()
        seen["optimizer"] = resumed.optimizers[0].state_dict()["param_groups"][0]["lr"]
        real_load(state)

    monkeypatch.setattr(amp, "load_state_dict", load_state_dict)
    resumed = _apex_trainer(amp, precision="apex", max_steps=4)
    resumed.fit(resumed_model, regression_loader(n=64, batch_size=8), ckpt_path=str(path))
    names = [name for name, _ in amp.calls]
    assert names[:4] == ["configure_optimizers", "initialize", "wrap_module", "load_state_dict"]
    torch.testing.assert_close(seen["weight"], saved["state_dict"]["net.0.weight"])
    assert seen["optimizer"] == saved["optimizer_states"][0]["param_groups"][0]["lr"] != 0.05
    assert amp.calls[4] == ("scale_loss", {"optimizers": resumed.optimizers, "loss_id": 0, "scale": 2.0**15})

    del amp._torchplug_opt_level
    amp.reset()
    other = _apex_trainer(amp, precision="apex", amp_level="O1", max_steps=4)
    with pytest.raises(MisconfigurationError, match=r"opt level 'O2'.*Resume with amp_level='O2'"):
        other.fit(_ApexNet(amp), regression_loader(n=64, batch_size=8), ckpt_path=str(path))


@_step_replaced
def test_gradient_clipping_in_fit_clips_master_params(amp, monkeypatch):
    asked = []
    real = amp.master_params
    monkeypatch.setattr(amp, "master_params", lambda o: asked.append(o) or real(o))
    model = _ApexNet(amp)
    trainer = _apex_trainer(amp, precision="apex", max_steps=2, gradient_clip_val=0.5)
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    assert asked == trainer.optimizers * 2
