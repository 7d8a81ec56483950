"""Small value types that hooks pass around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """Where this process sits among the job's processes (answer of ``torchplug_world``)."""

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
