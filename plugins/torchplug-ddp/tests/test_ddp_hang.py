"""A rank that hangs is named, for real: in a ddp_cpu (launcher) and a ddp_spawn job, rank 1 sleeps inside
training_step while rank 0 waits for it in DDP's gradient all-reduce. With hang_timeout=3 the supervisor must dump
both stacks, name rank 1 and the line it is stuck on, say that rank 0 waits in a collective, and end the job within
seconds (not after the 30-minute collective timeout), leaving no process behind."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ddp_test_support import PYTHON, distributed_variable, processes_mentioning, write_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SCRIPT = """
import os, sys, time
from torch.utils.data import DataLoader
from torchplug import Trainer
from torchplug.testing import QUIET, BoringModel, regression_data

STRATEGY, OUT = sys.argv[1], sys.argv[2]

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 4 and self.global_rank == 1:
            open(os.path.join(OUT, "hanging"), "w").close()
            time.sleep(3600)  # HANG-HERE
        return super().training_step(batch, batch_idx)

if __name__ == "__main__":
    trainer = Trainer(strategy=STRATEGY, devices=2, accelerator="cpu", max_epochs=1000, hang_timeout=3, **QUIET)
    trainer.fit(Model(), DataLoader(regression_data(64), batch_size=4))
"""


def start(tmp_path, argv):
    env = {k: v for k, v in os.environ.items() if not distributed_variable(k)}
    return subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "PYTHONWARNINGS": "ignore"})  # fmt: skip


def wait_for_the_hang(tmp_path, proc):
    deadline = time.monotonic() + 150
    while not (tmp_path / "hanging").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "training never reached step 4"
        time.sleep(0.05)
    since = time.monotonic()
    output, _ = proc.communicate(timeout=90)
    return output, time.monotonic() - since


def hang_line():
    return next(i for i, text in enumerate(SCRIPT.splitlines(), 1) if "HANG-HERE" in text)


@pytest.mark.parametrize("strategy", ["ddp_cpu", "ddp_spawn"])
def test_a_hung_rank_is_named_with_its_stack_and_the_job_ends(tmp_path, strategy):
    script = write_script(tmp_path, SCRIPT, "hang.py")
    proc = start(tmp_path, [PYTHON, str(script), strategy, str(tmp_path)])
    try:
        output, took = wait_for_the_hang(tmp_path, proc)
    finally:
        proc.kill()
    assert proc.returncode != 0
    line = hang_line()
    report = re.search(r"rank 1 \(pid \d+\) made no progress for \d+ s \(hang_timeout=3 s.*", output)
    assert report, output
    assert f"it is stuck at {script}:{line} in training_step" in report.group(0), output
    assert "rank 0 waits for it in a collective" in report.group(0), output
    stacks = output[report.start():]
    prefix = r"(\[rank0\]: )?"  # torch's excepthook prefixes every line of rank 0's error
    assert re.search(rf"--- rank 1 \(pid \d+\)\n{prefix}  File .*hang\.py\", line {line} in training_step", stacks), output
    assert re.search(rf"--- rank 0 \(pid \d+\)\n{prefix}  File .*torch", stacks), output
    assert "SIGTERM received" not in output  # a hung rank is killed, not asked to stop
    assert took < 60, f"the job took {took:.0f} s to end after the hang began"
    deadline = time.monotonic() + 5
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []
    print(f"{strategy}: hang -> job ended in {took:.1f} s")


def test_under_torchrun_each_rank_watches_itself_and_the_stuck_one_says_so(tmp_path):
    """No supervisor of ours: the stuck rank reports where it is and exits, torchrun ends the other one."""
    script = write_script(tmp_path, SCRIPT, "hang.py")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = start(tmp_path, [torchrun, "--standalone", "--nproc-per-node", "2", str(script), "ddp_cpu", str(tmp_path)])
    try:
        output, took = wait_for_the_hang(tmp_path, proc)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert re.search(rf"torchplug: rank 1 \(pid \d+\) made no progress for \d+ s \(hang_timeout=3 s.*it is stuck at "
                     rf"{re.escape(str(script))}:{hang_line()} in training_step", output), output  # fmt: skip
    assert took < 60, f"the job took {took:.0f} s to end after the hang began"
    print(f"torchrun: hang -> job ended in {took:.1f} s")
