"""Several nodes, emulated on 127.0.0.1: two torchrun agents (``--nnodes 2 --node-rank 0/1``) for ddp and ddp2.

Both must end with the weights of one process trained on the whole batch (per-node batch 4, two nodes, versus
batch 8 on one device)."""

import json
import shutil
import subprocess
import time

import pytest
import torch
from ddp_test_support import PYTHON, clean_environment, processes_mentioning, run
from test_ddp_training import SCRIPT, single_device

from torchplug.distributed import find_free_port

pytestmark = pytest.mark.timeout(180)


def torchrun_two_nodes(tmp_path, **config):
    script = tmp_path / "train.py"
    shutil.copy(SCRIPT, script)
    port = find_free_port()
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    args = [str(script), json.dumps(config), str(tmp_path)]
    node1 = subprocess.Popen([*torchrun, "--node-rank", "1", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=clean_environment())  # fmt: skip
    try:
        run([*torchrun, "--node-rank", "0", *args], tmp_path, timeout=150).check()
        out, _ = node1.communicate(timeout=60)
        assert node1.returncode == 0, out
    finally:
        node1.kill()
    deadline = time.monotonic() + 10
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []
    return {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}


@pytest.mark.parametrize("strategy", ["ddp_cpu", "ddp2"])
def test_two_torchrun_nodes(tmp_path, strategy):
    reports = torchrun_two_nodes(tmp_path, strategy=strategy, accelerator="cpu", devices=1, num_nodes=2, batch_size=4)
    assert sorted(reports) == ["rank0", "rank1"]
    for rank, report in enumerate([reports["rank0"], reports["rank1"]]):
        assert (report["global_rank"], report["node_rank"], report["local_rank"]) == (rank, rank, 0)
        assert (report["world_size"], report["environment"]) == (2, "torchelastic")
        assert report["metrics"]["rank_sum"] == 3.0
    assert reports["rank0"]["weights"] == reports["rank1"]["weights"]
    reference = torch.tensor(single_device(tmp_path, batch_size=8))
    assert torch.allclose(torch.tensor(reports["rank0"]["weights"]), reference, rtol=0, atol=1e-6)


def test_ddp2_on_the_cpu_is_one_device_per_node_never_something_else():
    from torchplug import MisconfigurationError, Trainer

    with pytest.raises(MisconfigurationError, match="ddp2.*devices=2.*one process with one device per node"):
        Trainer(strategy="ddp2", accelerator="cpu", devices=2, logger=False)
    assert Trainer(strategy="ddp2", accelerator="cpu", devices=1, logger=False).num_processes == 1
