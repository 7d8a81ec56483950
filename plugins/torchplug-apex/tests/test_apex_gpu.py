"""torchplug-apex with real NVIDIA apex on a CUDA GPU: every opt level (O0-O3) trains, an overflow is skipped where
the loss scale is dynamic (O1, O2), a checkpoint resumes with its loss scale, alone and under one-process DDP over
NCCL; at O2 the optimizer's ``zero_grad`` is apex's own (no ``set_to_none`` parameter) and the run goes through it.

Runs only where CUDA is available and ``apex.amp`` (apex 25.04, see README.md) imports. apex allows one
``amp.initialize`` per process, so each case runs in its own process (started with this process's import path).
The CPU tests (test_apex_standin.py) check the same against a stand-in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from torchplug.testing import subprocess_env
from torchplug_apex import find_amp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.xdist_group("gpu"),  # one worker runs every GPU test, one after the other
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        find_amp()[0] is None, reason=f"needs NVIDIA apex 25.04 with apex.amp: {find_amp()[1]}"
    ),
]

_SCRIPT = """
import inspect, json, sys
import torch
import torch.distributed as dist
from torch import nn
from torchplug import Callback, Module, Trainer
from torchplug.testing import QUIET, regression_loader
from apex import amp

level, mode, strategy, out, ckpt = sys.argv[1:6]
overflow_at = 5 if level in ("O1", "O2") and mode == "fit" else None  # O0 and O3 use a static loss scale of 1


class Net(Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
        self.losses = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)  # apex casts forward's inputs at O2/O3
        self.losses.append(loss.item())
        return loss * float("inf") if self.global_step == overflow_at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Record(Callback):
    def __init__(self):
        self.moved, self.seen = [], {}

    def on_train_start(self, trainer, pl_module):
        self.seen = {
            "start_scale": amp.state_dict()["loss_scaler0"]["loss_scale"],
            "wrapped": type(trainer.model).__name__,  # the strategy's wrapper; released when the run ends
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "zero_grad": list(inspect.signature(trainer.optimizers[0].zero_grad).parameters),
            "param_dtype": str(next(pl_module.parameters()).dtype),
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.moved.append(any(not torch.equal(b, p) for b, p in zip(self.before, pl_module.parameters(), strict=True)))


torch.manual_seed(0)
model, record = Net(), Record()
max_steps = 40 if mode != "resume" else 48
trainer = Trainer(accelerator="gpu", devices=1, strategy=strategy, precision=16, amp_level=level,
                  max_steps=max_steps, callbacks=[record], **QUIET)
trainer.fit(model, regression_loader(n=256, batch_size=16), ckpt_path=ckpt if mode == "resume" else None)
if mode == "fit":
    trainer.save_checkpoint(ckpt)
json.dump({
    **record.seen, "losses": model.losses, "moved": record.moved, "strategy": trainer.strategy_name,
    "scale": amp.state_dict()["loss_scaler0"]["loss_scale"], "param_device": str(next(model.parameters()).device),
}, open(out, "w"))
"""


def _run(tmp_path, level, mode, strategy, ckpt):
    script = tmp_path / "apex_case.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    out = tmp_path / f"{level}-{mode}.json"
    done = subprocess.run(
        [sys.executable, str(script), level, mode, strategy, str(out), str(ckpt)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def _check_the_run(result, level, strategy):
    assert result["param_device"].startswith("cuda")
    assert result["param_dtype"] == ("torch.float16" if level in ("O2", "O3") else "torch.float32")
    if level == "O2":  # apex's own zero_grad, called by the core without arguments (a set_to_none fails here)
        assert result["zero_grad"] == []
    if strategy == "ddp":
        assert (result["strategy"], result["wrapped"], result["backend"]) == ("ddp", "DistributedDataParallel", "nccl")
    first, last = sum(result["losses"][:5]) / 5, sum(result["losses"][-5:]) / 5
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
@pytest.mark.parametrize("level", ["O0", "O1", "O2", "O3"])
def test_each_opt_level_trains_skips_an_overflow_and_resumes(level, strategy, tmp_path):
    ckpt = tmp_path / "apex.ckpt"
    fit = _run(tmp_path, level, "fit", strategy, ckpt)
    _check_the_run(fit, level, strategy)
    if level in ("O1", "O2"):
        # dynamic loss scale: the forced overflow at step 5 is skipped; apex may skip early steps too while its first
        # scale (2**16) comes down, each skip halving it; training goes on
        assert fit["moved"][5] is False and all(fit["moved"][-10:])
        assert fit["scale"] == 2.0**16 / 2 ** fit["moved"].count(False)
    else:  # a static scale of 1: nothing is skipped (O3's float16 updates may round away late in training)
        assert fit["scale"] == 1.0 and (level == "O3" or all(fit["moved"]))
    resumed = _run(tmp_path, level, "resume", strategy, ckpt)
    assert resumed["start_scale"] == fit["scale"]
    assert len(resumed["moved"]) == 8
    if strategy == "ddp":
        assert resumed["backend"] == "nccl"


def test_one_process_ddp_over_nccl(tmp_path):
    """strategy='ddp' with devices=1: a process group of one over NCCL, DistributedDataParallel built after
    ``amp.initialize``, and O2's patched optimizer stepping through it."""
    result = _run(tmp_path, "O2", "ddp-only", "ddp", tmp_path / "unused.ckpt")
    _check_the_run(result, "O2", "ddp")
    assert result["start_scale"] == 2.0**16
