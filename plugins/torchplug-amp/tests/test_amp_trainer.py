"""16-mixed and bf16-mixed through the real Trainer on the CPU: training, overflow, resume, manual optimization, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from torch import nn

from torchplug import Callback, Module, Trainer, registry
from torchplug.testing import QUIET, regression_loader, subprocess_env
from torchplug_amp import STATE_KEY, BF16MixedPrecision, MixedPrecision


class _Net(Module):
    """A small MLP whose loss can be made to overflow float16 on one chosen step."""

    def __init__(self, overflow_at: int | None = None, lr: float = 0.05, schedule: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
        self.overflow_at, self.lr, self.schedule = overflow_at, lr, schedule
        self.losses: list[float] = []
        self.output_dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        self.output_dtypes.add(out.dtype)
        loss = nn.functional.mse_loss(out, y)
        self.losses.append(loss.item())
        if self.global_step == self.overflow_at:
            loss = loss * 1e30  # finite in float32, inf once the gradient reaches float16
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if not self.schedule:
            return opt
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _StepRecorder(Callback):
    """Per optimizer step: did the parameters move, the scale after it, the learning rate after it."""

    def __init__(self) -> None:
        self.moved: list[bool] = []
        self.scales: list[float] = []
        self.lrs: list[float] = []
        self.grad_norms: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int) -> None:
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: Module, optimizer: Any) -> None:
        self.grad_norms.append(torch.cat([p.grad.flatten() for p in pl_module.parameters()]).norm().item())

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.moved.append(
            any(not torch.equal(b, p) for b, p in zip(self._before, pl_module.parameters(), strict=True))
        )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales.append(scaler.get_scale() if scaler is not None else 1.0)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _amp(init_scale: float = 2.0**10) -> MixedPrecision:
    """16-mixed with a scale this small model never overflows at by itself, so that only forced overflows skip."""
    return MixedPrecision(scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))


def _fit(model: Module, precision: Any, tmp_path: Any, **kwargs: Any) -> tuple[Trainer, _StepRecorder]:
    recorder = _StepRecorder()
    trainer = Trainer(
        accelerator="cpu", precision=precision, callbacks=[recorder], default_root_dir=str(tmp_path),
        **{**QUIET, **kwargs},
    )  # fmt: skip
    trainer.fit(model, regression_loader(n=64, batch_size=8))
    return trainer, recorder


def _saved_plugin_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """Each saved rank's plugin states (``torchplug_state_dict`` answers), in rank order (docs/checkpoints.md)."""
    return [entry["plugins"] for entry in checkpoint["ranks"]]


@pytest.mark.parametrize(
    ("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)]
)
def test_loss_falls_with_float32_parameters(precision, dtype, tmp_path):
    torch.manual_seed(0)
    model = _Net()
    trainer, recorder = _fit(model, precision, tmp_path, max_epochs=4)
    assert model.output_dtypes == {dtype}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert (
        len(recorder.moved) == 32 and sum(recorder.moved) >= 28
    )  # the default scale may skip a few at first
    first, last = sum(model.losses[:8]) / 8, sum(model.losses[-8:]) / 8
    assert last < 0.3 * first, (first, last)


def test_legacy_names_select_16_mixed(tmp_path):
    assert isinstance(Trainer(accelerator="cpu", precision=16, **QUIET).precision_plugin, MixedPrecision)
    assert isinstance(Trainer(accelerator="cpu", precision="bf16", **QUIET).precision_plugin, BF16MixedPrecision)
    with pytest.warns(DeprecationWarning, match="use_amp"):
        assert isinstance(Trainer(accelerator="cpu", use_amp=True, **QUIET).precision_plugin, MixedPrecision)


def test_overflow_skips_exactly_one_step_halves_the_scale_and_holds_the_scheduler(tmp_path):
    torch.manual_seed(0)
    model = _Net(overflow_at=3, schedule=True)
    trainer, recorder = _fit(model, _amp(), tmp_path, max_steps=6)
    assert recorder.moved == [True, True, True, False, True, True]
    assert recorder.scales == [2.0**10] * 3 + [2.0**9] * 3
    # StepLR halves the rate on every step taken: five, not six
    assert recorder.lrs == [0.025, 0.0125, 0.00625, 0.00625, 0.003125, 0.0015625]
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 5
    assert trainer.global_step == 6


def test_on_before_optimizer_step_and_clipping_see_true_gradients(tmp_path):
    torch.manual_seed(0)
    reference = _Net()
    model = _Net()
    model.load_state_dict(reference.state_dict())
    _, full = _fit(reference, "32-true", tmp_path, max_steps=3)
    _, mixed = _fit(model, _amp(), tmp_path, max_steps=3)
    assert mixed.grad_norms == pytest.approx(full.grad_norms, rel=2e-2)

    torch.manual_seed(0)
    clipped = _Net()
    before = [p.detach().clone() for p in clipped.parameters()]
    _fit(clipped, _amp(), tmp_path, max_steps=1, gradient_clip_val=1e-3)
    step = torch.cat(
        [(b - p.detach()).flatten() for b, p in zip(before, clipped.parameters(), strict=True)]
    ).norm()
    assert step.item() == pytest.approx(0.05 * 1e-3, rel=1e-2)  # lr * clip_val: unscaled, then clipped


def test_accumulated_micro_batches_share_one_scale(tmp_path):
    torch.manual_seed(0)
    reference, model = _Net(), _Net()
    model.load_state_dict(reference.state_dict())
    _fit(reference, "32-true", tmp_path, max_steps=2, accumulate_grad_batches=2)
    _, recorder = _fit(model, _amp(), tmp_path, max_steps=2, accumulate_grad_batches=2)
    assert recorder.moved == [False, True, False, True]  # four micro-batches, two steps
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)


def test_resume_restores_the_scale(tmp_path):
    torch.manual_seed(0)
    trainer, recorder = _fit(_Net(overflow_at=1), _amp(), tmp_path, max_steps=3)
    assert recorder.scales[-1] == 2.0**9
    path = tmp_path / "amp.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    [rank0] = _saved_plugin_states(checkpoint)  # plugin state is kept per rank; this run had one
    assert rank0[STATE_KEY]["scaler"]["scale"] == 2.0**9

    class ScaleAtStart(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
            self.scale = trainer.precision_plugin.scaler.get_scale()

    seen = ScaleAtStart()
    resumed = Trainer(accelerator="cpu", precision="16-mixed", max_steps=5, callbacks=[seen], **QUIET)
    resumed.fit(_Net(), regression_loader(n=64, batch_size=8), ckpt_path=str(path))
    assert seen.scale == 2.0**9  # a fresh default scaler would start at 2**16
    assert resumed.global_step == 5


class _Manual(_Net):
    def __init__(self, overflow_at: int | None = None) -> None:
        super().__init__(overflow_at=overflow_at)
        self.automatic_optimization = False
        self.scaled_norms: list[float] = []
        self.clipped_norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        self.scaled_norms.append(torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item())
        self.clip_gradients(opt, gradient_clip_val=1e-3)
        self.clipped_norms.append(torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item())
        opt.step()


def test_manual_optimization_goes_through_the_same_scaling(tmp_path):
    torch.manual_seed(0)
    model = _Manual(overflow_at=2)
    _, recorder = _fit(model, _amp(), tmp_path, max_steps=4)
    finite = [n for i, n in enumerate(model.scaled_norms) if i != 2]
    assert min(finite) > 10  # manual_backward scaled the loss by 2**10
    assert [n for i, n in enumerate(model.clipped_norms) if i != 2] == pytest.approx([1e-3] * 3, rel=1e-3)
    assert recorder.moved == [True, True, False, True]
    assert recorder.scales == [2.0**10, 2.0**10, 2.0**9, 2.0**9]


def test_a_closure_optimizer_is_refused_at_setup(tmp_path):
    class WithLBFGS(_Net):
        def configure_optimizers(self) -> Any:
            return torch.optim.LBFGS(self.parameters())

    with pytest.raises(Exception, match=r"precision='16-mixed' cannot step LBFGS"):
        _fit(WithLBFGS(), "16-mixed", tmp_path, max_steps=1)
    model = WithLBFGS()
    _, recorder = _fit(model, "bf16-mixed", tmp_path, max_steps=2)
    assert all(recorder.moved)


def test_evaluation_and_prediction_run_under_autocast(tmp_path):
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", **QUIET)
    predictions = trainer.predict(_Net(), regression_loader(n=16, batch_size=8))
    assert {p.dtype for p in predictions} == {torch.bfloat16}


_DDP_SCRIPT = """
import json, os, sys
import torch
from torch import nn
from torchplug import Module, Trainer
from torchplug.testing import QUIET, regression_loader
from torchplug_amp import MixedPrecision

precision, out_dir = sys.argv[1], sys.argv[2]
overflow_at = 2 if precision == "16-mixed" else None  # bfloat16 has no scaler to skip a step
if precision == "16-mixed":  # a scale this model never overflows at by itself: only the forced overflow skips
    precision = MixedPrecision(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))

class Net(Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
        self.losses, self.dtypes = [], set()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.dtypes.add(str(out.dtype))
        loss = nn.functional.mse_loss(out, y)
        self.losses.append(loss.item())
        if self.global_step == overflow_at and self.global_rank == 0:
            loss = loss * 1e30  # one rank overflows; after the all-reduce both must skip
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

torch.manual_seed(0)
model = Net()
trainer = Trainer(accelerator="cpu", strategy="ddp_cpu", devices=2, precision=precision, max_epochs=6, **QUIET)
trainer.fit(model, regression_loader(n=64, batch_size=8))
scaler = getattr(trainer.precision_plugin, "scaler", None)
with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump({
        "world_size": trainer.world_size, "dtypes": sorted(model.dtypes), "losses": model.losses,
        "scale": scaler.get_scale() if scaler is not None else None,
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    }, f)
"""


_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK")


@pytest.mark.skipif(
    "ddp_cpu" not in registry.installed_names("strategy"),
    reason="strategy 'ddp_cpu' is not installed (it comes with plugins/torchplug-ddp)",
)
@pytest.mark.parametrize(
    ("precision", "dtype", "scale"),
    [("16-mixed", "torch.float16", 2.0**9), ("bf16-mixed", "torch.bfloat16", None)],
)
def test_ddp_cpu_with_two_processes(precision, dtype, scale, tmp_path):
    script = tmp_path / "train_ddp_amp.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), precision, str(tmp_path)],
        cwd=tmp_path,
        env={k: v for k, v in subprocess_env().items() if k not in _RENDEZVOUS},  # a job of its own
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["dtypes"] == [dtype] and rank["param_dtypes"] == ["torch.float32"]
        assert rank["scale"] == scale
        # each rank sees half of the 8 batches per epoch
        first, last = sum(rank["losses"][:4]) / 4, sum(rank["losses"][-4:]) / 4
        assert last < 0.5 * first, (first, last)
    assert ranks[0]["params"] == ranks[1]["params"]  # gradients were averaged, and the skip agreed


def test_manual_optimization_clip_gradients_unscales_once():
    """self.clip_gradients(opt, ...) with the handle from self.optimizers() must see true gradients, not
    gradients divided by the scale twice (a huge clip value leaves them unclipped)."""
    import torchplug
    from torchplug.testing import QUIET, BoringModel, regression_loader

    norms = {}

    class Manual(BoringModel):
        def __init__(self, clip):
            super().__init__()
            self.automatic_optimization, self.clip = False, clip

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            self.manual_backward(self._loss(batch))
            if self.clip:
                self.clip_gradients(opt, gradient_clip_val=1e9)
            opt.step()
            opt.zero_grad()

        def on_before_optimizer_step(self, optimizer):
            grads = [p.grad.norm() for p in self.parameters() if p.grad is not None]
            norms.setdefault(self.clip, []).append(float(torch.stack(grads).norm()))

    from torchplug_amp import MixedPrecision

    for clip in (False, True):
        torch.manual_seed(0)
        precision = MixedPrecision(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
        torchplug.Trainer(accelerator="cpu", **QUIET, precision=precision, max_steps=2).fit(Manual(clip), regression_loader(16, 8))
    assert norms[True] == pytest.approx(norms[False], rel=1e-3)
