"""No hangs, one report (``torchplug.distributed._failures`` and the launcher's watchdog), through the Trainer with
the core's ``ProcessGroupStrategy``: one rank of a two-process fit is killed (SIGKILL, from outside) or raises
mid-epoch while the other waits in a gloo collective. Every process must stop within 60 s, the job must exit
non-zero, the failing rank (and its traceback, when it has one) must be printed once, and no process may be left
behind. Then the root-cause rules and error files themselves. (torchplug-ddp runs the same through DDP's reducer.)"""

import os
import re
import signal
import subprocess
import time

import pytest
from distributed_test_support import PYTHON, clean_environment, processes_mentioning, write_script

from torchplug import ProcessFailedError
from torchplug.distributed import Failure, _failures, root_cause

SCRIPT = """
import os, sys, time, torch
from torch.utils.data import DataLoader
from torchplug import Trainer
from torchplug.distributed import ProcessGroupStrategy
from torchplug.testing import QUIET, BoringModel, regression_data

MODE, OUT = sys.argv[1], sys.argv[2]

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            open(os.path.join(OUT, f"rank{self.global_rank}.pid"), "w").write(str(os.getpid()))
            if MODE == "raise" and self.global_rank == 1:
                raise ValueError("rank-one-broke-here")
        time.sleep(0.05)  # a long epoch: the failure happens mid-epoch
        self.log("synced", torch.tensor(1.0), sync_dist=True)  # a collective every step: rank 0 waits in gloo
        return super().training_step(batch, batch_idx)

if __name__ == "__main__":
    trainer = Trainer(strategy=ProcessGroupStrategy(), accelerator="cpu", devices=2, max_epochs=1000, **QUIET)
    trainer.fit(Model(), DataLoader(regression_data(64), batch_size=4))
"""

pytestmark = pytest.mark.timeout(150)


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


# ==================================================================================================== the rules
def test_the_root_cause_is_the_earliest_failure_that_is_not_a_consequence():
    consequence = _failures.from_exception(0, RuntimeError("[gloo] Connection closed by peer 127.0.0.1"))
    cause = _failures.from_exception(1, ValueError("the real problem"))
    assert consequence.secondary and not cause.secondary
    assert root_cause([consequence, cause]) is cause  # although it came second
    killed = _failures.from_exit_code(1, 4242, -signal.SIGKILL)
    assert (killed.summary, killed.secondary) == ("was killed by SIGKILL", False)  # a signal is a cause
    assert _failures.from_exit_code(2, 1, 3).summary == "exited with code 3"
    # a failure reported by another launcher only says that a peer is gone
    assert _failures.from_exception(0, ProcessFailedError("rank 3 ...")).secondary
    later = Failure(rank=0, pid=1, time=cause.time + 1, summary="raised KeyError")
    assert root_cause([later, cause]) is cause
    assert root_cause([consequence]) is consequence  # nothing better: the consequence is all there is


def test_an_error_file_keeps_the_traceback_and_reads_back(tmp_path):
    try:
        raise KeyError("boom")
    except KeyError as exc:
        failure = _failures.from_exception(5, exc)
    assert _failures.write(str(tmp_path), failure)
    assert _failures.read(str(tmp_path), 5) == failure
    assert 'raise KeyError("boom")' in failure.report() and failure.report().startswith(f"rank 5 (pid {os.getpid()}) raised KeyError")
    assert _failures.read(str(tmp_path), 6) is None  # no file: the launcher falls back to the exit code
    assert not _failures.write(str(tmp_path / "missing"), failure)  # could not record: the process prints it itself
