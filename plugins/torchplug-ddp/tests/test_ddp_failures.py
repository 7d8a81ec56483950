"""No hangs, through the Trainer: one rank of a ddp_cpu fit is killed (SIGKILL, from outside) or raises mid-epoch.
Every process must stop within 60 s, the job must exit non-zero, the failing rank (and its traceback, when it
has one) must be printed once, and no process may be left behind.

The supervision is the core's (``torchplug.distributed``; core/tests/test_distributed_failures.py tests it with the
core's own strategy); here the survivor waits inside DistributedDataParallel's gradient all-reduce, whose errors
must be recognised as consequences of the failure, not reported as its cause."""

import os
import re
import signal
import subprocess
import time

import pytest
from ddp_test_support import PYTHON, clean_environment, processes_mentioning, write_script

pytestmark = pytest.mark.timeout(150)

SCRIPT = """
import os, sys, time, torch
from torch.utils.data import DataLoader
from torchplug import Trainer
from torchplug.testing import QUIET, BoringModel, regression_data

MODE, OUT = sys.argv[1], sys.argv[2]

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            open(os.path.join(OUT, f"rank{self.global_rank}.pid"), "w").write(str(os.getpid()))
            if MODE == "raise" and self.global_rank == 1:
                raise ValueError("rank-one-broke-here")
        time.sleep(0.05)  # a long epoch: the failure happens mid-epoch
        return super().training_step(batch, batch_idx)

if __name__ == "__main__":
    trainer = Trainer(strategy="ddp_cpu", accelerator="cpu", devices=2, max_epochs=1000, **QUIET)
    trainer.fit(Model(), DataLoader(regression_data(64), batch_size=4))
"""


def start(tmp_path, mode):
    script = write_script(tmp_path, SCRIPT, "fail.py")
    return subprocess.Popen([PYTHON, str(script), mode, str(tmp_path)], cwd=tmp_path,
                            env={**clean_environment(), "PYTHONWARNINGS": "ignore"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(proc, tmp_path, since):
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the job did not stop within 60 s of the failure\n{proc.communicate()[0]}")
    elapsed = time.monotonic() - since
    assert proc.returncode != 0, output
    assert elapsed < 60
    deadline = time.monotonic() + 5
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []
    return output


def wait_for(path, proc, seconds=90):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "training never reached step 3"
        time.sleep(0.05)


def test_sigkill_of_one_rank_mid_epoch_stops_the_job(tmp_path):
    proc = start(tmp_path, "kill")
    try:
        wait_for(tmp_path / "rank1.pid", proc)
        victim = int((tmp_path / "rank1.pid").read_text())
        os.kill(victim, signal.SIGKILL)
        output = finish(proc, tmp_path, time.monotonic())
    finally:
        proc.kill()
    assert len(re.findall(rf"rank 1 \(pid {victim}\) was killed by SIGKILL", output)) == 1, output


def test_an_exception_in_one_rank_is_reported_once_with_its_traceback(tmp_path):
    proc = start(tmp_path, "raise")
    try:
        wait_for(tmp_path / "rank1.pid", proc)
        output = finish(proc, tmp_path, time.monotonic())
    finally:
        proc.kill()
    assert len(re.findall(r"rank 1 \(pid \d+\) raised ValueError: rank-one-broke-here", output)) == 1, output
    assert output.count('raise ValueError("rank-one-broke-here")') == 1, output  # the traceback, once
    assert "Connection reset" not in output and "Connection closed" not in output  # consequences stay quiet
