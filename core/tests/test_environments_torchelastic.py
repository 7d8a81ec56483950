"""The ``torchelastic`` environment (``torchplug.environments.torchelastic``): processes started by torchrun, whose
layout the Trainer's ``num_nodes``/``devices`` must agree with.

Real Trainers are constructed with the core's ``ProcessGroupStrategy`` (no process is started: construction only
detects and validates). Training under two real torchrun agents is tested in torchplug-ddp (test_ddp_multinode)."""

import pytest
from distributed_test_support import clear_distributed_variables

from torchplug import MisconfigurationError, Trainer
from torchplug.distributed import ProcessGroupStrategy
from torchplug.testing import QUIET

TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400",
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_launcher_variables(monkeypatch):
    clear_distributed_variables(monkeypatch)


def trainer(**kwargs):
    return Trainer(**{"strategy": ProcessGroupStrategy(), "accelerator": "cpu", "devices": 2, **QUIET, **kwargs})


def info(t):
    return t.hook.torchplug_cluster_info(trainer=t)


def test_torchelastic(monkeypatch):
    for k, v in TORCHRUN.items():
        monkeypatch.setenv(k, v)
    t = trainer(num_nodes=2)
    assert t.environment_name == "torchelastic"
    i = info(t)
    assert (i.global_rank, i.local_rank, i.node_rank, i.world_size, i.num_nodes) == (3, 1, 1, 4, 2)
    assert (i.main_address, i.main_port, i.creates_processes_externally) == ("10.0.0.1", 29400, True)


def test_torchrun_and_num_nodes_must_agree(monkeypatch):
    for k, v in TORCHRUN.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(MisconfigurationError, match=r"num_nodes=1, but torchrun started the job on 2 node\(s\): pass num_nodes=2"):
        trainer(num_nodes=1)
    # torchrun made 1 process per node on 2 nodes; devices=2 per node would need 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    trainer(num_nodes=2, devices=1)
    with pytest.raises(MisconfigurationError, match=r"needs 2 process\(es\) per node \(4 in all.*torchrun started 2.*--nproc-per-node 2"):
        trainer(num_nodes=2, devices=2)


def test_our_own_children_are_never_taken_for_torchruns(monkeypatch):
    """The launcher sets RANK/LOCAL_RANK/WORLD_SIZE/LOCAL_WORLD_SIZE but neither TORCHELASTIC_RUN_ID nor GROUP_RANK."""
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "0",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234", "TORCHPLUG_LAUNCHER_PID": "1"}  # fmt: skip
    for k, v in launched.items():
        monkeypatch.setenv(k, v)
    assert trainer().environment_name == "local"
