"""Which environment is detected, what it reports, and that a Trainer disagreeing with the launcher fails clearly.

Real Trainers are constructed (no process is started: construction only detects and validates)."""

import os

import pytest
from ddp_test_support import _distributed_variable

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET


@pytest.fixture(autouse=True)
def no_launcher_variables(monkeypatch):
    for name in list(os.environ):
        if _distributed_variable(name):
            monkeypatch.delenv(name)


def trainer(**kwargs):
    return Trainer(**{"strategy": "ddp_cpu", "devices": 2, **QUIET, **kwargs})


def info(t):
    return t.hook.torchplug_cluster_info(trainer=t)


TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400",
}  # fmt: skip
SRUN = {
    "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
    "SLURM_STEP_ID": "0", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234567", "SLURM_JOB_NAME": "bash",
}  # fmt: skip


def test_local_when_nothing_launched_us():
    t = trainer()
    assert t.environment_name == "local"
    first = info(t)
    assert (first.global_rank, first.local_rank, first.world_size, first.creates_processes_externally) == (0, 0, 2, False)
    assert first.main_address == "127.0.0.1"
    assert info(t).main_port == first.main_port  # chosen once, handed to every process


def test_local_child_reads_what_the_launcher_set(monkeypatch):
    for k, v in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}.items():
        monkeypatch.setenv(k, v)
    i = info(trainer())
    assert (i.global_rank, i.local_rank, i.main_port, i.creates_processes_externally) == (1, 1, 1234, True)


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


def test_slurm(monkeypatch):
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    t = trainer(num_nodes=2)
    assert t.environment_name == "slurm"
    i = info(t)
    assert (i.global_rank, i.local_rank, i.node_rank, i.world_size, i.num_nodes) == (3, 1, 1, 4, 2)
    assert (i.main_address, i.main_port, i.creates_processes_externally) == ("gpu07", 15000 + 4567, True)
    monkeypatch.setenv("MASTER_PORT", "23456")
    monkeypatch.setenv("MASTER_ADDR", "head")
    assert (info(t).main_address, info(t).main_port) == ("head", 23456)


def test_slurm_layout_must_agree(monkeypatch):
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(MisconfigurationError, match=r"num_nodes=1, but SLURM started the job on 2 node\(s\)"):
        trainer(num_nodes=1)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(MisconfigurationError, match="SLURM started 2: run srun -N 2 --ntasks-per-node 2"):
        trainer(num_nodes=2)


def test_slurm_batch_script_or_salloc_shell_is_not_an_srun_task(monkeypatch):
    for k, v in SRUN.items():
        if k != "SLURM_STEP_ID":
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_NNODES", "1")
    assert trainer().environment_name == "local"
    with pytest.raises(MisconfigurationError, match="plugins=\\['slurm'\\]|SLURM started"):
        trainer(plugins=["slurm"])  # named explicitly it is used, and its layout check still applies


def test_local_multi_node_needs_the_rendezvous(monkeypatch):
    with pytest.raises(MisconfigurationError, match="num_nodes=2 without torchrun or SLURM: .*MASTER_ADDR"):
        trainer(num_nodes=2)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1234")
    monkeypatch.setenv("NODE_RANK", "2")
    with pytest.raises(MisconfigurationError, match="NODE_RANK='2'"):
        trainer(num_nodes=2)
    monkeypatch.setenv("NODE_RANK", "1")
    i = info(trainer(num_nodes=2))
    assert (i.global_rank, i.node_rank, i.world_size, i.creates_processes_externally) == (2, 1, 4, False)


def test_named_environment_wins_over_detection(monkeypatch):
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NNODES", "1")
    assert trainer(plugins=["local"]).environment_name == "local"
