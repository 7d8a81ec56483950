"""torchplug-apex against a recording stand-in for ``apex.amp`` (tests/apex_standin/apex/amp.py), on the CPU.

CI has no GPU and cannot install NVIDIA apex; the stand-in records calls and imitates apex's loss scaling, so
these tests check what the plugin asks of apex and in which order. The CUDA check is bypassed only through the
plugin's documented test seam, ``ApexPrecision.supported_device_types``. Real apex runs in test_apex_gpu.py.

The plugin is always registered as the Trainer registers it; the per-batch parts are checked on the run's
:class:`torchplug.StepOps` exactly as the loop holds them (``trainer._loop.ops``), from inside a running ``fit``.
"""

from __future__ import annotations

import inspect
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch import nn

from torchplug import Callback, MisconfigurationError, Module, StepOps, Trainer, hookimpl, registry
from torchplug._plugins import check_plugin
from torchplug.accelerators.cpu import CPUAccelerator
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
    monkeypatch.setattr(ApexPrecision, "supported_device_types", ("cuda", "cpu"))
    import apex.amp

    apex.amp.reset()
    yield apex.amp
    _forget_apex()


class _CudaTypedAccelerator(CPUAccelerator):
    """An accelerator of another name that declares the device type ``cuda`` (it computes on the CPU: only
    construction-time checks use it, which read capabilities, never names)."""

    device_type = "cuda"


class _Net(Module):
    """Manual optimization, so that it may have several optimizers; the checks drive the steps themselves."""

    def __init__(self, n_optimizers: int = 1, optimizer: Callable[..., Any] = torch.optim.SGD) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(4, 3)
        self.factor = 1.0
        self.n_optimizers, self.optimizer = n_optimizers, optimizer
        self.configured: list[torch.optim.Optimizer] = []
        self.backward_losses: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self(batch).pow(2).mean() * self.factor  # through forward, which apex casts at O2/O3

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.backward_losses.append(loss.detach().clone())
        super().backward(loss, *args, **kwargs)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        kwargs = {"lr": 0.1} if self.optimizer is torch.optim.SGD else {}
        self.configured = [self.optimizer(self.parameters(), **kwargs) for _ in range(self.n_optimizers)]
        return list(self.configured)


def _in_a_run(plugin: Any, check: Callable[..., Any] | None = None, net: _Net | None = None) -> Any:
    """Fit ``net`` (a fresh one-optimizer ``_Net`` by default) on the CPU with ``plugin`` and call
    ``check(trainer, net, ops)`` once the run is set up (``amp.initialize`` done), before any batch
    (``on_train_start``; ``limit_train_batches=0``, so the loop trains nothing itself); returns its answer."""
    returned = []

    class Check(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
            returned.append(check(trainer, pl_module, trainer._loop.ops) if check is not None else None)

    torch.manual_seed(0)
    trainer = Trainer(
        accelerator="cpu", precision=plugin, callbacks=[Check()], max_epochs=1, limit_train_batches=0, **QUIET
    )
    trainer.fit(net if net is not None else _Net(), regression_loader(n=8, batch_size=8))
    assert len(returned) == 1, "the check did not run"
    return returned[0]


def _forward(ops: StepOps, batch: torch.Tensor) -> torch.Tensor:
    return ops.forward("train", (batch, 0))


def _closure(ops: StepOps, opt: torch.optim.Optimizer, batch: torch.Tensor) -> Callable[[], Any]:
    """What the loop's closure does for one micro-batch: forward, backward, then the gradients made final."""

    def closure() -> torch.Tensor:
        loss = _forward(ops, batch)
        ops.backward(loss, opt)
        ops.prepare_gradients(opt)
        return loss

    return closure


def _plugin_states(trainer: Trainer) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for answer in trainer.hook.torchplug_state_dict(trainer=trainer):
        states.update(answer or {})
    return states


def _load(states: dict[str, Any]) -> Callable[..., None]:
    def check(trainer, net, ops):
        # the core hands this rank's saved states over read-only, after setup
        trainer.hook.torchplug_load_state_dict(trainer=trainer, states=MappingProxyType(states))

    return check


def test_entry_point_and_opt_levels():
    assert registry.load("precision", "apex") is ApexPrecision
    assert check_plugin(ApexPrecision) == []  # what registration checks
    assert ApexPrecision().amp_level == "O2"
    assert ApexPrecision(amp_level="o1").amp_level == "O1"
    with pytest.raises(MisconfigurationError, match=r"amp_level='O4'.*'O0', 'O1', 'O2', 'O3'"):
        ApexPrecision(amp_level="O4")
    with pytest.raises(MisconfigurationError, match=r"amp_level='02'.*the letter O, not zero"):
        ApexPrecision(amp_level="02")


def test_a_non_cuda_accelerator_is_refused_without_the_test_seam(amp):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ApexPrecision, "supported_device_types", ("cuda",))
        with pytest.raises(
            MisconfigurationError,
            match=r"needs a CUDA accelerator.*accelerator='cpu' computes on 'cpu'.*"
            r"accelerator='gpu'.*'16-mixed'",
        ):
            Trainer(accelerator="cpu", precision="apex", **QUIET)
        # decided on the device type, not the name: another accelerator that computes on CUDA is accepted
        trainer = Trainer(accelerator=_CudaTypedAccelerator(), precision="apex", **QUIET)
        assert trainer.run.device_type == "cuda" and trainer.precision_plugin.amp is amp


def test_missing_apex_explains_how_to_install_25_04(monkeypatch, tmp_path):
    _forget_apex()
    monkeypatch.setitem(sys.modules, "apex", None)
    assert find_amp()[0] is None and not ApexPrecision.is_available()
    with pytest.raises(MisconfigurationError) as err:
        Trainer(accelerator=_CudaTypedAccelerator(), precision="apex", **QUIET)
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
    Trainer(accelerator="cpu", precision=plugin, **QUIET)  # torchplug_configure finds apex
    assert plugin.amp is amp
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.amp_level == "O3" and copy.amp is None
    assert plugin.amp is amp


def test_initialize_once_with_every_optimizer_and_a_loss_scale_each(amp):
    net = _Net(n_optimizers=2)
    optimizers = _in_a_run(
        ApexPrecision(amp_level="O1"), lambda trainer, net, ops: list(trainer.optimizers), net
    )
    [(name, call)] = amp.calls
    assert name == "initialize"
    assert call["models"] == [net] and call["optimizers"] == net.configured
    assert call["opt_level"] == "O1" and call["num_losses"] == 2 and call["verbosity"] == 1
    assert call["param_devices"] == {torch.device("cpu")}
    assert optimizers == net.configured  # the run steps what amp.initialize returned
    # the second fit in one process: apex allows one amp.initialize
    with pytest.raises(MisconfigurationError, match=r"already ran in this process \(opt level O1\)"):
        _in_a_run(ApexPrecision(amp_level="O1"))
    assert [name for name, _ in amp.calls] == ["initialize"]


def test_closure_optimizers_are_refused(amp):
    with pytest.raises(MisconfigurationError, match=r"precision='apex' cannot step LBFGS"):
        _in_a_run(ApexPrecision(), net=_Net(optimizer=torch.optim.LBFGS))
    assert amp.calls == []


def test_backward_goes_through_scale_loss_with_the_optimizer_s_loss_id(amp):
    def check(trainer, net, ops):
        batch = torch.randn(8, 4)
        second = trainer.optimizers[1]
        with torch.no_grad():
            loss = net.training_step(batch, 0)
        assert ops.optimizer_step(second, _closure(ops, second, batch)) is True
        scale_calls = [call for name, call in amp.calls if name == "scale_loss"]
        assert scale_calls == [{"optimizers": [second], "loss_id": 1, "scale": 2.0**16}]
        assert amp.calls[-1] == ("step", {"optimizer": second})
        # the scaled loss went through the module's own backward
        [scaled] = net.backward_losses
        torch.testing.assert_close(scaled, loss * 2.0**16)
        # manual_backward(loss) without an optimizer: every optimizer, the first loss scale
        ops.backward(_forward(ops, batch), None)
        assert amp.calls[-1] == (
            "scale_loss", {"optimizers": trainer.optimizers, "loss_id": 0, "scale": 2.0**16}
        )

    _in_a_run(ApexPrecision(), check, _Net(n_optimizers=2))


def test_an_overflow_skips_exactly_that_step(amp):
    def check(trainer, net, ops):
        [opt] = trainer.optimizers
        batch = torch.randn(8, 4)
        before = [p.detach().clone() for p in net.parameters()]
        net.factor = float("inf")
        assert ops.optimizer_step(opt, _closure(ops, opt, batch)) is False
        assert [name for name, _ in amp.calls][-1] == "skipped_step"
        assert all(torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
        assert amp.loss_scalers[0].loss_scale == 2.0**15
        opt.zero_grad()
        net.factor = 1.0
        assert ops.optimizer_step(opt, _closure(ops, opt, batch)) is True
        assert [name for name, _ in amp.calls][-1] == "step"
        assert not torch.equal(before[0], net.layer.weight)

    _in_a_run(ApexPrecision(), check)


def test_clipping_uses_apex_master_params(amp, monkeypatch):
    def check(trainer, net, ops):
        [opt] = trainer.optimizers
        _closure(ops, opt, torch.randn(8, 4))()
        asked = []
        real = amp.master_params
        monkeypatch.setattr(amp, "master_params", lambda o: asked.append(o) or real(o))
        masters = list(real(opt))
        assert {p.dtype for p in masters} == {torch.float32} and {p.dtype for p in net.parameters()} == {torch.float16}
        scaled = [p.grad.clone() for p in net.parameters()]
        ops.clip_gradients(opt, 1e-3, "norm")
        assert asked == [opt]
        # the optimizer steps the float32 masters: their gradients are clipped; the model's keep the loss scale
        assert torch.cat([p.grad.flatten() for p in masters]).norm() == pytest.approx(1e-3, rel=1e-3)
        assert all(torch.equal(s, p.grad) for s, p in zip(scaled, net.parameters(), strict=True))
        ops.clip_gradients(opt, 1e-5, "value")
        assert asked == [opt, opt]
        assert max(p.grad.abs().max() for p in masters) <= 1e-5

    _in_a_run(ApexPrecision(), check)


def test_state_round_trip_and_another_opt_level_refused(amp):
    def save(trainer, net, ops):
        amp.loss_scalers[0].loss_scale, amp.loss_scalers[0].unskipped = 1024.0, 7
        return _plugin_states(trainer)

    states = _in_a_run(ApexPrecision(), save)
    assert states == {
        STATE_KEY: {"opt_level": "O2", "amp": {"loss_scaler0": {"loss_scale": 1024.0, "unskipped": 7}}}
    }

    del amp._torchplug_opt_level  # a new process
    amp.reset()
    _in_a_run(ApexPrecision(), _load(states))
    assert [name for name, _ in amp.calls] == ["initialize", "load_state_dict"]  # loaded after initialize
    assert (amp.loss_scalers[0].loss_scale, amp.loss_scalers[0].unskipped) == (1024.0, 7)

    # a checkpoint of another precision: apex keeps its initial loss scales
    del amp._torchplug_opt_level
    amp.reset()
    _in_a_run(ApexPrecision(), _load({"someone_else": {}}))
    assert [name for name, _ in amp.calls] == ["initialize"] and amp.loss_scalers[0].loss_scale == 2.0**16

    del amp._torchplug_opt_level
    with pytest.raises(
        MisconfigurationError, match=r"amp_level='O1'.*opt level 'O2'.*Resume with amp_level='O2'"
    ):
        _in_a_run(ApexPrecision(amp_level="O1"), _load(states))


# ------------------------------------------------------------------------------------------------ through the Trainer


class _ApexNet(Module):
    """Trains on a tenth of its loss with ten times the learning rate: its gradients then stay well inside
    float16's range at apex's first loss scale (2**16), so that only the forced overflow is skipped."""

    def __init__(self, amp_module, overflow_at=None, scheduler=True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.amp_module, self.overflow_at, self.scheduler = amp_module, overflow_at, scheduler
        self.losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        return 0.1 * loss * float("inf") if self.global_step == self.overflow_at else 0.1 * loss

    def configure_optimizers(self):
        self.amp_module.calls.append(("configure_optimizers", {}))
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        if not self.scheduler:
            return opt
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


def _saved_plugin_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """Each saved rank's plugin states (``torchplug_state_dict`` answers), in rank order (docs/checkpoints.md)."""
    return [entry["plugins"] for entry in checkpoint["ranks"]]


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
    # at O2 zero_grad is apex's own (no set_to_none parameter), called before each backward
    assert names[3:] == (
        ["zero_grad", "scale_loss", "step"] * 2 + ["zero_grad", "scale_loss", "skipped_step"]
        + ["zero_grad", "scale_loss", "step"]
    )  # fmt: skip
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
    [rank0] = _saved_plugin_states(saved)  # plugin state is kept per rank; this run had one
    assert rank0[STATE_KEY] == {
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
    # apex's O2 model is float16 and saves float32 (its state_dict hook): the saved weights are loaded exactly
    assert seen["weight"].dtype == torch.float16 and saved["state_dict"]["net.0.weight"].dtype == torch.float32
    torch.testing.assert_close(seen["weight"].float(), saved["state_dict"]["net.0.weight"], rtol=0, atol=0)
    assert seen["optimizer"] == saved["optimizer_states"][0]["param_groups"][0]["lr"] != 0.5
    assert amp.calls[5] == ("scale_loss", {"optimizers": resumed.optimizers, "loss_id": 0, "scale": 2.0**15})

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


# ------------------------------------------------------------------------------------------------ O2's zero_grad


class _ManualApexNet(_ApexNet):
    def __init__(self, amp_module) -> None:
        super().__init__(amp_module, scheduler=False)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        opt.step()


@pytest.mark.parametrize("optimization", ["automatic", "accumulating", "manual"])
def test_o2_zero_grad_is_apex_s_own_and_every_path_calls_it_without_arguments(amp, optimization):
    """apex O2 replaces ``optimizer.zero_grad`` by its own, which has no ``set_to_none`` parameter (apex 25.04's
    ``_process_optimizer``): a core calling ``zero_grad(set_to_none=...)`` fails every O2 run at its first step.
    Pinned here through each way the core zeroes gradients: the automatic closure, the first micro-batch of an
    accumulation window, and ``self.optimizers().zero_grad()`` in manual optimization."""
    model = _ManualApexNet(amp) if optimization == "manual" else _ApexNet(amp, scheduler=False)
    accumulate = 2 if optimization == "accumulating" else 1
    trainer = _apex_trainer(amp, precision=16, amp_level="O2", max_steps=4, accumulate_grad_batches=accumulate)
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    [opt] = trainer.optimizers
    assert "set_to_none" not in inspect.signature(opt.zero_grad).parameters
    with pytest.raises(TypeError, match=r"new_zero_grad\(\) got an unexpected keyword argument 'set_to_none'"):
        opt.zero_grad(set_to_none=True)  # what apex answers
    names = [name for name, _ in amp.calls if name in ("zero_grad", "scale_loss", "step")]
    assert names == ["zero_grad", *["scale_loss"] * accumulate, "step"] * 4
    assert trainer.global_step == 4 and len(model.losses) == 4 * accumulate
    # what O2 did to the run: a float16 model, float32 masters stepped in the optimizer, float32 checkpoints
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    masters = list(amp.master_params(opt))
    assert {p.dtype for p in masters} == {torch.float32} and not {id(p) for p in masters} & {id(p) for p in model.parameters()}
    assert all(torch.equal(m.half(), p) for m, p in zip(masters, model.parameters(), strict=True))
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}


# ------------------------------------------------------------------------------------------------ every opt level


@_step_replaced
@pytest.mark.parametrize("level", ["O0", "O1", "O2", "O3"])
def test_every_opt_level_trains_skips_an_overflow_and_resumes(amp, level, tmp_path):
    """The CPU counterpart of test_apex_gpu.py's: trains, the forced overflow is skipped where the loss scale is
    dynamic (O1, O2; O0 and O3 keep a static scale of 1 and take every step), a checkpoint resumes with the loss
    scale it saved."""
    dynamic = level in ("O1", "O2")
    model = _ApexNet(amp, overflow_at=3 if dynamic else None)
    trainer = _apex_trainer(amp, precision=16, amp_level=level, max_steps=16)
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    assert model.net[0].weight.dtype == (torch.float16 if level in ("O2", "O3") else torch.float32)
    first, last = sum(model.losses[:4]) / 4, sum(model.losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)
    steps = [name for name, _ in amp.calls if name in ("step", "skipped_step")]
    assert steps == (["step"] * 3 + ["skipped_step"] + ["step"] * 12 if dynamic else ["step"] * 16)
    scale = amp.loss_scalers[0].loss_scale
    assert scale == (2.0**15 if dynamic else 1.0)
    path = tmp_path / "apex.ckpt"
    trainer.save_checkpoint(path)

    del amp._torchplug_opt_level  # a new process
    amp.reset()
    resumed_model = _ApexNet(amp)
    resumed = _apex_trainer(amp, precision=16, amp_level=level, max_steps=20)
    resumed.fit(resumed_model, regression_loader(n=64, batch_size=8), ckpt_path=str(path))
    assert resumed.global_step == 20 and len(resumed_model.losses) == 4
    assert amp.loss_scalers[0].loss_scale == scale
    assert resumed_model.losses[0] < first


@_step_replaced
def test_o2_under_one_process_ddp_wraps_the_initialized_model(amp, clean_env):
    """The CPU counterpart of test_apex_gpu.py's ``test_one_process_ddp_over_nccl`` (gloo here): DDP wraps the model
    apex cast, after ``amp.initialize`` (apex refuses a model that is already wrapped)."""
    seen = {}

    class Wrapped(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
            seen["wrapper"] = type(trainer.model).__name__

    model = _ApexNet(amp, overflow_at=2)
    trainer = _apex_trainer(amp, strategy="ddp", devices=1, precision=16, amp_level="O2", max_steps=8,
                            callbacks=[Wrapped()])  # fmt: skip
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    names = [name for name, _ in amp.calls]
    assert names[:3] == ["configure_optimizers", "initialize", "wrap_module"]
    assert seen["wrapper"] == "DistributedDataParallel" and trainer.strategy_name == "ddp"
    assert names.count("zero_grad") == 8 and names.count("skipped_step") == 1 and names.count("step") == 7
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert sum(model.losses[-3:]) < sum(model.losses[:3])
