"""Stopping a multi-process run on a signal, for real: ddp_cpu (our launcher re-runs the script) and ddp_spawn, the
signal sent to one rank only, to the caller only, or to the whole process group (what Ctrl-C in a terminal does).
Every rank must stop after the same optimizer step, save through ModelCheckpoint(save_on_exception=True), and the
job must exit with the signal's status (1 for SIGINT, 143 for SIGTERM), print one line, leave no process behind."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from ddp_test_support import PYTHON, processes_mentioning, write_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SCRIPT = """
import json, os, sys, time
from torch.utils.data import DataLoader
from torchplug import Callback, Trainer
from torchplug.callbacks import ModelCheckpoint
from torchplug.testing import BoringModel, regression_data

STRATEGY, OUT = sys.argv[1], sys.argv[2]

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            path = os.path.join(OUT, f"rank{self.global_rank}.pid")
            if not os.path.exists(path):
                open(path, "w").write(str(os.getpid()))
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)

class Record(Callback):
    def on_exception(self, trainer, pl_module, exception):
        with open(os.path.join(OUT, f"stopped{trainer.global_rank}.json"), "w") as fh:
            json.dump({"exception": type(exception).__name__, "step": trainer.global_step}, fh)

if __name__ == "__main__":
    trainer = Trainer(strategy=STRATEGY, devices=2, accelerator="cpu", max_epochs=1000, default_root_dir=OUT,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Record(), ModelCheckpoint(dirpath=os.path.join(OUT, "ck"), save_on_exception=True)])
    trainer.fit(Model(), DataLoader(regression_data(800), batch_size=4))
"""


@pytest.mark.parametrize(
    ("strategy", "target", "signum"),
    [("ddp_cpu", "rank1", signal.SIGTERM), ("ddp_cpu", "group", signal.SIGINT),
     ("ddp_spawn", "caller", signal.SIGTERM), ("ddp_spawn", "group", signal.SIGINT)],
)  # fmt: skip
def test_every_rank_stops_after_the_same_step_saves_and_exits_with_the_signal_status(tmp_path, strategy, target, signum):
    script = write_script(tmp_path, SCRIPT, "train.py")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    proc = subprocess.Popen([PYTHON, str(script), strategy, str(tmp_path)], cwd=tmp_path, start_new_session=True,
                            env={**env, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while not all((tmp_path / f"rank{r}.pid").exists() for r in (0, 1)):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "training never reached step 3"
            time.sleep(0.05)
        sent = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signum)  # a terminal's Ctrl-C: the caller and every rank at once
        elif target == "caller":
            proc.send_signal(signum)
        else:
            os.kill(int((tmp_path / "rank1.pid").read_text()), signum)  # one rank only: the others must follow
        output, _ = proc.communicate(timeout=90)
        latency = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    code = 1 if signum == signal.SIGINT else 128 + signum
    assert proc.returncode == code, output
    stops = [json.loads((tmp_path / f"stopped{r}.json").read_text()) for r in (0, 1)]
    exception = "KeyboardInterrupt" if signum == signal.SIGINT else "SIGTERMException"
    assert stops[0] == stops[1] and stops[0]["exception"] == exception, stops
    step = stops[0]["step"]
    name = signal.Signals(signum).name
    said = re.findall(rf"torchplug: stopped by {name} after step {step} \(epoch \d+\); saved (\S+); resume with", output)
    assert len(said) == 1, output
    assert said[0].endswith(f"-step={step}.ckpt") and torch.load(said[0], weights_only=True)["global_step"] == step
    assert "Traceback" not in output and "ProcessFailedError" not in output, output
    deadline = time.monotonic() + 5
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []
    print(f"{strategy} {name} to {target} -> exit: {latency:.2f} s")
