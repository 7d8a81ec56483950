"""XLA runs that need a process of their own: several CPU devices, SPMD mode, a replica started by ``xmp.spawn``.

PyTorch/XLA fixes the device count and the SPMD mode of a process when its runtime starts, so each run here is
``xla_runs.py`` in a fresh interpreter with ``PJRT_DEVICE=CPU`` and ``CPU_NUM_DEVICES`` set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.xla
pytest.importorskip("torch_xla", reason="needs torch_xla: run in .venv-xla (make test-xla)")

RUNS = Path(__file__).with_name("xla_runs.py")


def start(mode: str, out: Path, devices: int) -> subprocess.Popen:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices)}
    env["PYTHONPATH"] = os.pathsep.join([str(RUNS.parent), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(RUNS), mode, str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, out: Path) -> dict:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-4000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(300)
def test_spmd_data_parallel_over_four_devices_matches_one_device(tmp_path):
    spmd = start("spmd", tmp_path / "spmd.json", devices=4)
    single = start("single", tmp_path / "single.json", devices=4)
    spmd, single = finish(spmd, tmp_path / "spmd.json"), finish(single, tmp_path / "single.json")

    assert spmd["device_ids"] == [0, 1, 2, 3]
    # one program over the mesh: the batch is split along dimension 0 over the four devices
    assert spmd["seen"]["input_sharding"] == "{devices=[4,1]0,1,2,3}"
    assert single["device_ids"] == [1] and single["root_device"] == "xla:1"  # devices=[1]: that device
    assert single["seen"]["train_step_device"] == "xla:1" and single["seen"]["input_sharding"] == ""

    assert len(spmd["losses"]) == len(single["losses"]) == 24
    assert spmd["losses"][-1] < spmd["losses"][0] / 10
    assert spmd["losses"] == pytest.approx(single["losses"], rel=1e-4, abs=1e-5)
    assert spmd["weights"] == pytest.approx(single["weights"], rel=1e-4, abs=1e-5)
    assert spmd["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)


@pytest.mark.timeout(300)
def test_xla_strategy_spawned_replica_trains_and_hands_its_state_back(tmp_path):
    report = finish(start("spawn", tmp_path / "spawn.json", devices=1), tmp_path / "spawn.json")
    assert report["fit_pid"] != report["pid"]  # the stage ran in a replica process
    assert report["weights_changed"]  # the launching process holds the trained weights
    assert report["global_step"] == 16 and report["current_epoch"] == 2
    assert report["val_loss"] < 1.0
