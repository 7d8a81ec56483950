"""Processes started by us: ``python train.py`` becomes N processes (``ddp``, ``ddp_spawn``), or by hand on
each node with ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` set (Lightning's manual multi-node recipe)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from torchplug import ClusterInfo, MisconfigurationError, hookimpl
from torchplug.distributed._ports import find_free_port
from torchplug.environments import ClusterEnvironment

if TYPE_CHECKING:
    from torchplug import Trainer


class LocalEnvironment(ClusterEnvironment):
    """The fallback: detected always, after ``torchelastic`` and ``slurm``.

    A process that finds ``LOCAL_RANK`` set was started by a launcher (ours re-running the script, or the user
    by hand) and launches nothing; otherwise it is local rank 0 of its node and starts the others.
    """

    detect_order = 30

    def __init__(self) -> None:
        self._port: int | None = None

    @classmethod
    def detect(cls) -> bool:
        return True

    @hookimpl
    def torchplug_cluster_info(self, trainer: Trainer) -> ClusterInfo:
        per_node, nodes = trainer.num_processes, trainer.num_nodes
        node_rank = int(os.environ.get("NODE_RANK", 0))
        external = "LOCAL_RANK" in os.environ
        local_rank = int(os.environ["LOCAL_RANK"]) if external else 0
        global_rank = int(os.environ["RANK"]) if external and "RANK" in os.environ else node_rank * per_node + local_rank
        world_size = int(os.environ["WORLD_SIZE"]) if external and "WORLD_SIZE" in os.environ else per_node * nodes
        return ClusterInfo(
            global_rank=global_rank,
            local_rank=local_rank,
            node_rank=node_rank,
            world_size=world_size,
            main_address=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            main_port=self._main_port(),
            creates_processes_externally=external,
            num_nodes=nodes,
        )

    def _main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        if self._port is None:  # chosen once, then handed to every process we start
            self._port = find_free_port()
        return self._port

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        nodes = trainer.num_nodes
        node_rank = os.environ.get("NODE_RANK", "0")
        if not node_rank.isdigit() or int(node_rank) >= nodes:
            raise MisconfigurationError(
                f"num_nodes={nodes}, but NODE_RANK={node_rank!r}: set NODE_RANK to this node's index, 0 to {nodes - 1}"
            )
        if nodes > 1 and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
            raise MisconfigurationError(
                f"num_nodes={nodes} without torchrun or SLURM: run the same command on every node with MASTER_ADDR "
                "(node 0's address), MASTER_PORT and NODE_RANK (0.."
                f"{nodes - 1}) set, or start the job with torchrun --nnodes {nodes} or srun -N {nodes}"
            )
        if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:
            expected = trainer.num_processes * nodes
            if int(os.environ["WORLD_SIZE"]) != expected:
                raise MisconfigurationError(
                    f"devices={trainer.devices_arg!r}, num_nodes={nodes} make {expected} processes, but this process was "
                    f"started with WORLD_SIZE={os.environ['WORLD_SIZE']}: give every process the same devices and num_nodes"
                )
