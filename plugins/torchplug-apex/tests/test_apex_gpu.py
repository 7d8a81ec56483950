"""torchplug-apex with real NVIDIA apex on a CUDA GPU: O0-O3 train, an overflow is skipped, a checkpoint resumes, and
one-process DDP over NCCL works.

Runs only where CUDA is available and ``apex.amp`` (apex 25.04, see README.md) imports. apex allows one
``amp.initialize`` per process, so each case runs in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from torchplug_apex import find_amp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        find_amp()[0] is None, reason=f"needs NVIDIA apex 25.04 with apex.amp: {find_amp()[1]}"
    ),
]

_SCRIPT = """
import json, sys
import torch
from torch import nn
from torchplug import Callback, Module, Trainer
from torchplug.testing import QUIET, regression_loader
from apex import amp

level, mode, out, ckpt = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
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
        self.moved, self.start_scale, self.wrapped = [], None, None

    def on_train_start(self, trainer, pl_module):
        self.start_scale = amp.state_dict()["loss_scaler0"]["loss_scale"]
        self.wrapped = type(trainer.model).__name__  # the strategy's wrapper; released when the run ends

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.moved.append(any(not torch.equal(b, p) for b, p in zip(self.before, pl_module.parameters(), strict=True)))


torch.manual_seed(0)
model, record = Net(), Record()
strategy = "ddp" if mode == "ddp" else "auto"
max_steps = 40 if mode != "resume" else 48
trainer = Trainer(accelerator="gpu", devices=1, strategy=strategy, precision=16, amp_level=level,
                  max_steps=max_steps, callbacks=[record], **QUIET)
trainer.fit(model, regression_loader(n=256, batch_size=16), ckpt_path=ckpt if mode == "resume" else None)
if mode == "fit":
    trainer.save_checkpoint(ckpt)
json.dump({
    "losses": model.losses, "moved": record.moved, "start_scale": record.start_scale,
    "scale": amp.state_dict()["loss_scaler0"]["loss_scale"], "strategy": trainer.strategy_name,
    "wrapped": record.wrapped, "param_device": str(next(model.parameters()).device),
}, open(out, "w"))
"""


def _run(tmp_path, level, mode, ckpt):
    script = tmp_path / "apex_case.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    out = tmp_path / f"{level}-{mode}.json"
    done = subprocess.run(
        [sys.executable, str(script), level, mode, str(out), str(ckpt)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("level", ["O0", "O1", "O2", "O3"])
def test_each_opt_level_trains_skips_an_overflow_and_resumes(level, tmp_path):
    ckpt = tmp_path / "apex.ckpt"
    fit = _run(tmp_path, level, "fit", ckpt)
    first, last = sum(fit["losses"][:5]) / 5, sum(fit["losses"][-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert fit["param_device"].startswith("cuda")
    if level in ("O1", "O2"):
        # dynamic loss scale: the forced overflow at step 5 is skipped, and only that step
        assert fit["moved"][5] is False and fit["moved"].count(False) >= 1
        assert all(fit["moved"][6:])
    resumed = _run(tmp_path, level, "resume", ckpt)
    assert resumed["start_scale"] == fit["scale"]
    assert len(resumed["moved"]) == 8


def test_one_process_ddp_over_nccl(tmp_path):
    result = _run(tmp_path, "O2", "ddp", tmp_path / "unused.ckpt")
    assert result["strategy"] == "ddp" and result["wrapped"] == "DistributedDataParallel"
    first, last = sum(result["losses"][:5]) / 5, sum(result["losses"][-5:]) / 5
    assert last < 0.5 * first, (first, last)
