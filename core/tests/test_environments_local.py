"""The ``local`` environment (``torchplug.environments.local``): our own launcher's processes, or processes started by
hand with ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``. Detected last, always; named in ``plugins=[...]`` it wins.

Real Trainers are constructed with the core's ``ProcessGroupStrategy`` (no process is started: construction only
detects and validates)."""

import pytest
from distributed_test_support import clear_distributed_variables

from torchplug import MisconfigurationError, Trainer
from torchplug.distributed import ProcessGroupStrategy
from torchplug.testing import QUIET

SRUN = {
    "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
    "SLURM_STEP_ID": "0", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234567", "SLURM_JOB_NAME": "bash",
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_launcher_variables(monkeypatch):
    clear_distributed_variables(monkeypatch)


def trainer(**kwargs):
    return Trainer(**{"strategy": ProcessGroupStrategy(), "accelerator": "cpu", "devices": 2, **QUIET, **kwargs})


def info(t):
    return t.hook.torchplug_cluster_info(trainer=t)


def test_local_when_nothing_launched_us():
    t = trainer()
    assert t.environment_name == "local"
    first = info(t)
    assert (first.global_rank, first.local_rank, first.world_size, first.creates_processes_externally) == (0, 0, 2, False)
    assert first.main_address == "127.0.0.1"
    assert info(t).main_port == first.main_port  # chosen once, handed to every process


def test_a_world_of_one_still_has_an_environment():
    """A process group of one (devices=1) needs a rendezvous address too: the strategy asks for an environment."""
    t = trainer(devices=1)
    assert (t.environment_name, t.num_processes, t.world_size) == ("local", 1, 1)
    i = info(t)
    assert (i.global_rank, i.world_size, i.creates_processes_externally) == (0, 1, False)


def test_local_child_reads_what_the_launcher_set(monkeypatch):
    for k, v in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}.items():
        monkeypatch.setenv(k, v)
    i = info(trainer())
    assert (i.global_rank, i.local_rank, i.main_port, i.creates_processes_externally) == (1, 1, 1234, True)


def test_a_child_started_for_another_layout_fails_clearly(monkeypatch):
    for k, v in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(MisconfigurationError, match="make 2 processes, but this process was started with WORLD_SIZE=4"):
        trainer()


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


def test_the_built_in_environments_are_the_cores_own():
    """Registered by the core's entry points and importable from ``torchplug.environments``, lazily."""
    import subprocess

    from distributed_test_support import PYTHON, clean_environment

    from torchplug import registry

    # in a fresh interpreter, where no environment module is imported yet (the lazy import once recursed forever)
    code = (
        "import sys; from torchplug.environments import LocalEnvironment, SLURMEnvironment, TorchElasticEnvironment, "
        "expand_nodelist, first_host; print(first_host('n[3-4]'), LocalEnvironment.__module__)"
    )
    out = subprocess.run([PYTHON, "-c", code], env=clean_environment(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["n3", "torchplug.environments.local"], out.stderr[-2000:]
    from torchplug.environments import LocalEnvironment, SLURMEnvironment, TorchElasticEnvironment

    found = {b.name: b for b in registry.discover("environment")}
    for name, cls in (("local", LocalEnvironment), ("slurm", SLURMEnvironment), ("torchelastic", TorchElasticEnvironment)):
        assert found[name].distribution == "torchplug"
        assert found[name].load() is cls
