"""Processes started by SLURM's ``srun``: ranks from ``SLURM_*`` variables, the first node of the step as master;
on the requeue signal (``#SBATCH --signal=USR1@90``) the job saves and requeues itself, and resumes when it runs again."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from torchplug import ClusterInfo, MisconfigurationError, Restart, hookimpl
from torchplug.environments import ClusterEnvironment
from torchplug.environments._checks import check_layout
from torchplug.environments._nodelist import first_host

if TYPE_CHECKING:
    from torchplug import Trainer


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def slurm_main_port(job_id: str) -> int:
    """A port every task of a job agrees on without talking: 15000 plus the job id's last four digits."""
    digits = "".join(ch for ch in job_id if ch.isdigit())
    return 15000 + int(digits[-4:] or 0)


class SLURMEnvironment(ClusterEnvironment):
    """``srun -N nodes --ntasks-per-node P python train.py``: one task per process, started by SLURM.

    Detected only inside an srun step (``SLURM_STEP_ID`` set): a batch script or an ``salloc`` shell has
    ``SLURM_NTASKS`` too, but no process of the step was started there, so ``local`` is right for them.

    Preemption (Lightning's options and defaults): with ``auto_requeue=True``, ``requeue_signal`` (``SIGUSR1``; what
    ``#SBATCH --signal=USR1@90`` sends every task 90 s before the time limit) stops every rank after the same
    step; the job saves ``<default_root_dir>/restart/slurm-<job id>.ckpt`` (unless a checkpoint was saved at that
    step), global rank 0 runs ``scontrol requeue <job id>``, and every process exits. When SLURM starts the job again
    (``SLURM_RESTART_COUNT`` >= 1, same job id) ``fit`` resumes from the newest checkpoint the job saved, recorded in
    ``<default_root_dir>/restart/slurm-<job id>.json``. ``auto_requeue=False`` turns all of that off.
    """

    detect_order = 20

    def __init__(self, auto_requeue: bool = True, requeue_signal: Any = signal.SIGUSR1) -> None:
        if not isinstance(auto_requeue, bool):
            raise MisconfigurationError(f"SLURMEnvironment(auto_requeue={auto_requeue!r}): use True or False")
        self.auto_requeue = auto_requeue
        self.requeue_signal = _as_signal(requeue_signal)

    @classmethod
    def detect(cls) -> bool:
        return "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and _env("SLURM_STEP_ID", "SLURM_STEPID") is not None

    @hookimpl
    def torchplug_cluster_info(self, trainer: Trainer) -> ClusterInfo:
        missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NODEID") if k not in os.environ]
        nodelist = _env("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
        job_id = _env("SLURM_JOB_ID", "SLURM_JOBID")
        if missing or (nodelist is None and "MASTER_ADDR" not in os.environ):
            raise MisconfigurationError(
                f"plugins=['slurm'] needs the variables srun sets for each task; missing: "
                f"{', '.join(missing) or 'SLURM_NODELIST'}. Start the script with srun"
            )
        address = os.environ.get("MASTER_ADDR") or first_host(nodelist or "")
        if "MASTER_PORT" in os.environ:
            port = int(os.environ["MASTER_PORT"])
        elif job_id is not None:
            port = slurm_main_port(job_id)
        else:
            raise MisconfigurationError("plugins=['slurm']: neither MASTER_PORT nor SLURM_JOB_ID is set")
        return ClusterInfo(
            global_rank=int(os.environ["SLURM_PROCID"]),
            local_rank=int(os.environ["SLURM_LOCALID"]),
            node_rank=int(os.environ["SLURM_NODEID"]),
            world_size=int(os.environ["SLURM_NTASKS"]),
            main_address=address,
            main_port=port,
            creates_processes_externally=True,
            num_nodes=_num_nodes(),
        )

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if "SLURM_NTASKS" not in os.environ:
            return
        check_layout(
            trainer, "SLURM", _num_nodes(), int(os.environ["SLURM_NTASKS"]),
            f"run srun -N {trainer.num_nodes} --ntasks-per-node {trainer.num_processes} "
            f"(one task per process; the Trainer then launches nothing)",
        )  # fmt: skip


    # ------------------------------------------------------------------------------------------------ preemption
    @hookimpl
    def torchplug_requeue_signal(self, trainer: Trainer) -> int | None:
        return int(self.requeue_signal) if self.auto_requeue and _job_id() is not None else None

    @hookimpl
    def torchplug_restart_info(self, trainer: Trainer) -> Restart | None:
        job = _job_id()
        if not self.auto_requeue or job is None:
            return None
        base = os.path.join(trainer.default_root_dir, "restart", f"slurm-{job}")
        return Restart(
            description=f"SLURM job {job}",
            restarts=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            record=f"{base}.json",
            checkpoint=f"{base}.ckpt",
        )

    @hookimpl
    def torchplug_requeue(self, trainer: Trainer) -> str | None:
        job = _job_id()
        if job is None:
            return None
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"could not requeue SLURM job {job} (scontrol requeue {job}: {err})"
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            return f"could not requeue SLURM job {job} (scontrol requeue {job}: {why})"
        return f"SLURM job {job} requeued; it resumes from there when SLURM starts it again"


def _job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return _env("SLURM_JOB_ID", "SLURM_JOBID")


def _as_signal(value: Any) -> signal.Signals:
    """A signal given as ``signal.SIGUSR1``, ``10``, ``"SIGUSR1"`` or ``"USR1"``."""
    try:
        if isinstance(value, str):
            name = value.upper()
            return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value)
    except (KeyError, ValueError):
        pass
    raise MisconfigurationError(
        f"SLURMEnvironment(requeue_signal={value!r}): give a signal, e.g. signal.SIGUSR1, 'SIGUSR1' or 'USR2' "
        "(the one named in #SBATCH --signal=<sig>@<seconds>)"
    )


def _num_nodes() -> int:
    return int(_env("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES") or 1)
