"""SLURM for real: a one-machine cluster (Debian's slurm-wlm and munge) started by this module's session
fixture with ``tests/slurm/start_cluster.sh`` and stopped in its finalizer, then ``srun -n 2`` runs ddp_cpu."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from ddp_test_support import PYTHON, processes_mentioning, run
from test_ddp_training import SCRIPT, single_device

from torchplug_ddp._ports import find_free_port

SCRIPTS = Path(__file__).resolve().parents[3] / "tests" / "slurm"
# One xdist worker runs every SLURM test (the cluster is one per machine); see the Makefile's --dist loadgroup.
pytestmark = [pytest.mark.xdist_group("slurm"), pytest.mark.timeout(240)]


def _why_no_cluster() -> str | None:
    if not (SCRIPTS / "start_cluster.sh").exists():
        return f"{SCRIPTS}/start_cluster.sh is missing"
    if os.geteuid() != 0:
        return "a private SLURM cluster needs root (slurmd, and apt-get to install slurm-wlm and munge)"
    if shutil.which("slurmd") is None and shutil.which("apt-get") is None:
        return "slurmd is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = _why_no_cluster()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    directory = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "TORCHPLUG_SLURM_DIR": str(directory),
        "SLURM_CTLD_PORT": str(find_free_port()),
        "SLURM_NODE_PORT0": str(find_free_port() - 1),
    }
    started = subprocess.run(["bash", str(SCRIPTS / "start_cluster.sh")], env=env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    try:
        if started.returncode != 0:
            if shutil.which("slurmd") is None:
                pytest.skip(f"no SLURM cluster: installing slurm-wlm/munge failed:\n{started.stderr[-2000:]}")
            pytest.fail(f"start_cluster.sh failed:\n{started.stdout}\n{started.stderr}")
        yield {"SLURM_CONF": str(directory / "etc" / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh")], env=env, capture_output=True, timeout=120)


def test_srun_two_tasks_train_together(tmp_path, slurm_cluster):
    script = tmp_path / "train.py"
    shutil.copy(SCRIPT, script)
    config = {"strategy": "ddp_cpu", "devices": 2, "batch_size": 4}
    srun = ["srun", "-n", "2", "--immediate=60", "--kill-on-bad-exit=1", "--time=5"]
    run([*srun, PYTHON, str(script), json.dumps(config), str(tmp_path)], tmp_path, timeout=200,
        env=slurm_cluster).check()  # fmt: skip
    assert processes_mentioning(str(tmp_path)) == []
    reports = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert sorted(reports) == ["rank0", "rank1"]
    pids = set()
    for rank, report in enumerate([reports["rank0"], reports["rank1"]]):
        assert (report["global_rank"], report["local_rank"], report["world_size"]) == (rank, rank, 2)
        assert report["environment"] == "slurm"
        pids.add(report["pid"])
    assert len(pids) == 2  # two srun tasks, and no process launched by us
    reference = torch.tensor(single_device(tmp_path, batch_size=8))
    assert torch.allclose(torch.tensor(reports["rank0"]["weights"]), reference, rtol=0, atol=1e-6)
