"""Helpers for torchplug-fsdp's tests: launch the job script in fresh processes, read what each rank reported,
find processes left behind. A module of its own (not conftest.py), so that importing it cannot pick up another
package's conftest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from torchplug.testing import distributed_variable, processes_mentioning  # noqa: F401 (re-exported for the tests)

PYTHON = sys.executable
JOBS = Path(__file__).with_name("fsdp_jobs.py")


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.returncode, self.stdout, self.stderr, self.seconds = proc.returncode, proc.stdout, proc.stderr, seconds

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> Ran:
        assert self.returncode == 0, f"exit code {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        return self


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without inherited distributed variables (RANK, MASTER_PORT, SLURM_* ...)."""
    base = {k: v for k, v in os.environ.items() if not distributed_variable(k)}
    base["PYTHONWARNINGS"] = "ignore"
    base["OMP_NUM_THREADS"] = "1"
    return {**base, **(extra or {})}


def launch_jobs(out: Path, jobs: list[dict], timeout: float = 400, torchrun: int = 0) -> Ran:
    """``python fsdp_jobs.py`` in ``out``: the Trainer's launcher makes the other ranks, which run the jobs too;
    with ``torchrun=N``, ``torchrun --standalone --nproc-per-node N`` starts them instead."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "fsdp_jobs.py"
    shutil.copy(JOBS, script)
    (out / "jobs.json").write_text(json.dumps(jobs))
    command = [PYTHON, str(script), str(out / "jobs.json"), str(out)]
    if torchrun:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=out, env=clean_environment(), capture_output=True, text=True, timeout=timeout)
    return Ran(proc, time.monotonic() - start)


def reports(out: Path, name: str) -> list[dict]:
    """What each rank of job ``name`` reported, in rank order."""
    found = sorted(out.glob(f"{name}.rank*.json"), key=lambda p: int(p.stem.rsplit("rank", 1)[1]))
    assert found, f"job {name!r} wrote no report in {out}"
    return [json.loads(p.read_text()) for p in found]






@contextlib.contextmanager
def one_process() -> Iterator[None]:
    """For a one-process fsdp run inside the test process: its process group (a world of one) and the variables
    it sets are gone afterwards, so that no later test in this worker inherits them."""
    import torch.distributed as dist

    saved = dict(os.environ)
    for name in list(os.environ):
        if distributed_variable(name):
            del os.environ[name]
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(out)`` once per test session, even when xdist splits a module's tests over workers (each worker
    would otherwise run a module-scoped fixture itself): the first worker builds under a file lock, the others
    wait and read what it left. A build that failed is tried again by the next worker (and fails again)."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    out, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out)
            done.write_text("built")
    return out
