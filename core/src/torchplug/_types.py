"""Small value types that hooks pass around and read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """Where this process sits among the job's processes (answer of ``torchplug_world``, ``trainer.world``)."""

    global_rank: int = 0
    local_rank: int = 0
    node_rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class ClusterInfo:
    """What a cluster environment knows about the job (answer of ``torchplug_cluster_info``).

    ``creates_processes_externally`` is True when a scheduler (torchrun, srun) started every process, so the
    strategy must not launch any.
    """

    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int
    main_address: str
    main_port: int
    creates_processes_externally: bool
    num_nodes: int = 1


@dataclass(frozen=True)
class RunSpec:
    """What the Trainer's arguments selected, fixed for the Trainer's life: ``trainer.run``.

    Hooks decide compatibility on the capabilities here, never on the names users typed: ``device_type`` is the
    accelerator's declared torch device type (``"cpu"``, ``"cuda"``, ``"xla"``, ...), so a third party's
    accelerator on CUDA is accepted wherever ``cuda`` is. The names are the selected backends' primary names, for
    messages and the run header.
    """

    accelerator: str
    strategy: str
    precision: str
    environment: str | None
    device_type: str
    device_ids: tuple[int, ...]
    num_nodes: int
    num_processes: int
    devices_arg: Any = "auto"

    @property
    def world_size(self) -> int:
        """How many processes the job has: processes per node times nodes."""
        return self.num_processes * self.num_nodes

    @property
    def num_devices(self) -> int:
        """Devices per node."""
        return len(self.device_ids)


@dataclass(frozen=True)
class Restart:
    """A job that its scheduler may start again, and where it keeps what a restart resumes from (answer of
    ``torchplug_restart_info``).

    ``description`` names the job in messages (``"SLURM job 42"``); ``restarts`` counts how often the scheduler has
    started it again (0 on the first run); ``record`` is a small JSON file naming the newest full checkpoint the job
    saved, and ``checkpoint`` the file a stop saves to when nothing was saved at that step. Both paths stay the same
    across restarts of the job.
    """

    description: str
    restarts: int
    record: str
    checkpoint: str
