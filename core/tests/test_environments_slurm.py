"""The ``slurm`` environment (``torchplug.environments.slurm``): processes started by ``srun``.

First from the variables srun sets (real Trainers constructed with the core's ``ProcessGroupStrategy``; nothing is
started). Then for real: a one-machine cluster (Debian's slurm-wlm and munge) started by this module's session
fixture with ``tests/slurm/start_cluster.sh`` and stopped in its finalizer, where ``srun -n 2`` trains with the
core's ``ProcessGroupStrategy`` and, when torchplug-ddp is installed, with ``ddp_cpu``."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from distributed_test_support import (
    PYTHON,
    clean_environment,
    clear_distributed_variables,
    processes_mentioning,
    run,
    write_script,
)

from torchplug import MisconfigurationError, Trainer
from torchplug.distributed import ProcessGroupStrategy, find_free_port
from torchplug.testing import QUIET, subprocess_env

SCRIPTS = Path(__file__).resolve().parents[2] / "tests" / "slurm"
TRAIN_SCRIPT = Path(__file__).with_name("distributed_train_script.py")

SRUN = {
    "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
    "SLURM_STEP_ID": "0", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234567", "SLURM_JOB_NAME": "bash",
}  # fmt: skip


@pytest.fixture
def no_launcher_variables(monkeypatch):
    clear_distributed_variables(monkeypatch)


def trainer(**kwargs):
    return Trainer(**{"strategy": ProcessGroupStrategy(), "accelerator": "cpu", "devices": 2, **QUIET, **kwargs})


def info(t):
    return t.hook.torchplug_cluster_info(trainer=t)


# ==================================================================================================== variables
def test_slurm(monkeypatch, no_launcher_variables):
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


def test_slurm_layout_must_agree(monkeypatch, no_launcher_variables):
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(MisconfigurationError, match=r"num_nodes=1, but SLURM started the job on 2 node\(s\)"):
        trainer(num_nodes=1)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(MisconfigurationError, match="SLURM started 2: run srun -N 2 --ntasks-per-node 2"):
        trainer(num_nodes=2)


def test_slurm_batch_script_or_salloc_shell_is_not_an_srun_task(monkeypatch, no_launcher_variables):
    for k, v in SRUN.items():
        if k != "SLURM_STEP_ID":
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_NNODES", "1")
    assert trainer().environment_name == "local"
    with pytest.raises(MisconfigurationError, match="plugins=\\['slurm'\\]|SLURM started"):
        trainer(plugins=["slurm"])  # named explicitly it is used, and its layout check still applies


def test_slurm_named_outside_srun_says_what_is_missing(monkeypatch, no_launcher_variables):
    t = trainer(devices=1, plugins=["slurm"])
    with pytest.raises(MisconfigurationError, match="plugins=\\['slurm'\\] needs the variables srun sets.*SLURM_PROCID"):
        info(t)


# ==================================================================================================== a real cluster
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
        **subprocess_env(),
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


def _single_device_weights(tmp_path):
    """The reference run, in this process: one device, the whole batch (8)."""
    spec = importlib.util.spec_from_file_location("distributed_train_reference", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "reference"
    out.mkdir()
    _, model, _ = module.main({"strategy": "single_device", "accelerator": "cpu", "devices": 1, "batch_size": 8}, str(out))
    return module.weights(model)


def _ddp_cpu():
    pytest.importorskip("torchplug_ddp", reason="needs the torchplug-ddp plugin for its ddp_cpu strategy")
    return "ddp_cpu"


# One xdist worker runs every SLURM test (the cluster is one per machine): the Makefile's --dist loadscope keeps a
# module on one worker (the mark says so too, for --dist loadgroup where xdist's grouping works).
@pytest.mark.xdist_group("slurm")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["process_group", "ddp_cpu"])
def test_srun_two_tasks_train_together(tmp_path, slurm_cluster, strategy):
    if strategy == "ddp_cpu":
        _ddp_cpu()
    script = tmp_path / "train.py"
    shutil.copy(TRAIN_SCRIPT, script)
    config = {"strategy": strategy, "accelerator": "cpu", "devices": 2, "batch_size": 4}
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
        assert report["metrics"]["rank_sum"] == 3.0 and report["metrics"]["process_group_size"] == 2.0
        pids.add(report["pid"])
    assert len(pids) == 2  # two srun tasks, and no process launched by us
    assert reports["rank0"]["weights"] == reports["rank1"]["weights"]
    reference = torch.tensor(_single_device_weights(tmp_path))
    assert torch.allclose(torch.tensor(reports["rank0"]["weights"]), reference, rtol=0, atol=1e-6)


REQUEUE_SCRIPT = """
import json, os, sys, time
from torch.utils.data import DataLoader
import torchplug
from torchplug import Trainer
from torchplug.distributed import ProcessGroupStrategy
from torchplug.testing import QUIET, BoringModel, regression_data

OUT = sys.argv[1]

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 8 and self.global_rank == 0:
            open(os.path.join(OUT, "progress-" + os.environ.get("SLURM_RESTART_COUNT", "0")), "w").close()
        time.sleep(0.05)  # long enough for the signal to land mid-run
        return super().training_step(batch, batch_idx)

if __name__ == "__main__":
    torchplug.seed_everything(0)
    model = Model(lr=0.01)  # far from converged after 40 steps: a lost or repeated step changes every weight
    trainer = Trainer(strategy=ProcessGroupStrategy(), accelerator="cpu", devices=2, max_steps=40, default_root_dir=OUT,
                      **QUIET)
    trainer.fit(model, DataLoader(regression_data(256), batch_size=4, shuffle=True))
    if trainer.is_global_zero:
        with open(os.path.join(OUT, "result.json"), "w") as fh:
            json.dump({"weights": [float(v) for p in model.parameters() for v in p.detach().double().flatten()],
                       "step": trainer.global_step, "restarts": os.environ.get("SLURM_RESTART_COUNT")}, fh)
"""


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
@pytest.mark.timeout(400)
def test_usr1_saves_requeues_and_the_job_resumes_to_the_uninterrupted_result(tmp_path, slurm_cluster):
    """``--signal=USR1@N`` for real, sent at once with ``scancel -s USR1`` (SLURM's delivery of that signal to every
    task of the step): the ranks stop after one step, save, rank 0 runs ``scontrol requeue``, SLURM starts the job
    again with the same id, and it resumes and ends with the weights of a run that was never interrupted (bitwise)."""
    script = write_script(tmp_path, REQUEUE_SCRIPT, "train.py")
    job_dir, plain_dir = tmp_path / "job", tmp_path / "plain"
    job_dir.mkdir(), plain_dir.mkdir()
    env = {**clean_environment(), **slurm_cluster, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "slurm.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--open-mode=append", f"--output={out}", "--time=5",
         f"--wrap=srun --kill-on-bad-exit=1 {PYTHON} -u {script} {job_dir}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    # the same training, never interrupted, started by our own launcher, meanwhile
    plain = subprocess.Popen([PYTHON, str(script), str(plain_dir)], env={k: v for k, v in env.items() if k != "SLURM_CONF"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    started = time.monotonic()
    try:
        while not (job_dir / "progress-0").exists():
            assert time.monotonic() - started < 200, f"the job never reached step 8:\n{_read(out)}"
            time.sleep(0.1)
        subprocess.run(["scancel", "-s", "USR1", job], env=env, check=True, timeout=60)
        signalled = time.monotonic()
        while True:
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], env=env, capture_output=True,
                                   text=True, timeout=60).stdout.strip()  # fmt: skip
            if state == "PENDING BeginTime":  # a requeued job is held ~2 min by default; start it now
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, timeout=60)
            if not state:
                break
            assert time.monotonic() - signalled < 200, f"the job did not finish after the requeue:\n{_read(out)}"
            time.sleep(0.2)
        plain_output, _ = plain.communicate(timeout=200)
    finally:
        subprocess.run(["scancel", job], env=env, timeout=60)
        plain.kill()
    log = _read(out)
    assert plain.returncode == 0, plain_output
    result = json.loads((job_dir / "result.json").read_text())
    reference = json.loads((plain_dir / "result.json").read_text())
    assert result["restarts"] == "1", log
    assert result["step"] == reference["step"] == 40
    assert result["weights"] == reference["weights"], log  # bitwise: no step lost or repeated
    stop = re.search(r"torchplug: stopped by SIGUSR1 after step (\d+) \(epoch 0\); saved (\S+); .*SLURM job (\d+) requeued", log)
    assert stop and stop.group(3) == job, log
    assert f"SLURM job {job} restart 1: resuming from {stop.group(2)} (step {stop.group(1)})" in log, log
    assert list((job_dir / "restart").iterdir()) == []  # the finished job removed its restart files
    print(f"requeue test: signal at {signalled - started:.1f} s, done {time.monotonic() - started:.1f} s after submit")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "(no output yet)"
