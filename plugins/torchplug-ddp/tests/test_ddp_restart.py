"""torchelastic's restart resumes where the run was, when asked to: a real ``torchrun --max-restarts 1`` whose rank 1
crashes (``os._exit``) at step 12 of the first attempt; with ``TorchElasticEnvironment(resume_on_restart=True)`` the
restarted workers resume from the newest checkpoint the first attempt recorded (step 10) and end with the weights of
a run that never crashed (bitwise)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ddp_test_support import PYTHON, distributed_variable, write_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SCRIPT = """
import json, os, sys
from torch.utils.data import DataLoader
import torchplug
from torchplug import Trainer
from torchplug.callbacks import ModelCheckpoint
from torchplug.environments import TorchElasticEnvironment
from torchplug.testing import BoringModel, regression_data

MODE, OUT = sys.argv[1], sys.argv[2]

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if MODE == "elastic" and self.global_step == 12 and self.global_rank == 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
            os._exit(3)  # a crash: no exception, no cleanup
        return super().training_step(batch, batch_idx)

if __name__ == "__main__":
    torchplug.seed_everything(0)
    model = Model(lr=0.01)
    plugins = [TorchElasticEnvironment(resume_on_restart=True)] if MODE == "elastic" else None
    trainer = Trainer(strategy="ddp_cpu", devices=2, max_steps=40, default_root_dir=OUT, plugins=plugins, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ModelCheckpoint(dirpath=os.path.join(OUT, "ck"), every_n_train_steps=5)])
    trainer.fit(model, DataLoader(regression_data(256), batch_size=4, shuffle=True))
    if trainer.is_global_zero:
        with open(os.path.join(OUT, "result.json"), "w") as fh:
            json.dump({"weights": [float(v) for p in model.parameters() for v in p.detach().double().flatten()],
                       "step": trainer.global_step, "attempt": os.environ.get("TORCHELASTIC_RESTART_COUNT")}, fh)
"""


def test_a_torchrun_restart_resumes_from_the_last_checkpoint_when_asked(tmp_path):
    script = write_script(tmp_path, SCRIPT, "train.py")
    elastic, plain = tmp_path / "elastic", tmp_path / "plain"
    elastic.mkdir(), plain.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not distributed_variable(k)}, "PYTHONWARNINGS": "ignore"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    reference = subprocess.Popen([PYTHON, str(script), "plain", str(plain)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        run = subprocess.run(
            [torchrun, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", str(script), "elastic", str(elastic)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        reference_output, _ = reference.communicate(timeout=200)
    finally:
        reference.kill()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert reference.returncode == 0, reference_output
    result = json.loads((elastic / "result.json").read_text())
    expected = json.loads((plain / "result.json").read_text())
    assert result["attempt"] == "1", output  # the workers were restarted once
    assert re.search(r"torchelastic run \S+ restart 1: resuming from \S+step=10\.ckpt \(step 10\)", output), output
    assert result["step"] == expected["step"] == 40
    assert result["weights"] == expected["weights"]  # bitwise: the restart lost and repeated nothing
    assert list((elastic / "restart").iterdir()) == []  # the finished run removed its record
