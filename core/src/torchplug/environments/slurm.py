"""Processes started by SLURM's ``srun``: ranks from ``SLURM_*`` variables, the first node of the step as master."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from torchplug import ClusterInfo, MisconfigurationError, hookimpl
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
    """

    detect_order = 20

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


def _num_nodes() -> int:
    return int(_env("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES") or 1)
