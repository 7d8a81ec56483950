"""Processes started by ``torchrun`` (torch.distributed.elastic): read its variables, never launch."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from torchplug import ClusterInfo, MisconfigurationError, Restart, hookimpl
from torchplug.environments import ClusterEnvironment
from torchplug.environments._checks import check_layout

if TYPE_CHECKING:
    from torchplug import Trainer

_REQUIRED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class TorchElasticEnvironment(ClusterEnvironment):
    """``torchrun --nnodes N --nproc-per-node P train.py``: every process exists before the Trainer does.

    ``resume_on_restart=True`` (off by default): when torchrun restarts the workers after a failure
    (``--max-restarts``), ``fit`` resumes from the newest checkpoint the run saved before, recorded in
    ``<default_root_dir>/restart/torchelastic-<run id>.json`` (the run id stays the same across restarts).
    """

    detect_order = 10

    def __init__(self, resume_on_restart: bool = False) -> None:
        if not isinstance(resume_on_restart, bool):
            raise MisconfigurationError(
                f"TorchElasticEnvironment(resume_on_restart={resume_on_restart!r}): use True or False"
            )
        self.resume_on_restart = resume_on_restart

    @classmethod
    def detect(cls) -> bool:
        # TORCHELASTIC_RUN_ID is set by every torchrun agent; GROUP_RANK only by elastic agents. Our own
        # launcher sets neither, so its children are never mistaken for torchrun's.
        return "TORCHELASTIC_RUN_ID" in os.environ or all(
            k in os.environ for k in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        )

    @hookimpl
    def torchplug_cluster_info(self, trainer: Trainer) -> ClusterInfo:
        missing = [k for k in _REQUIRED if k not in os.environ]
        if missing:
            raise MisconfigurationError(
                f"plugins=['torchelastic'] needs the variables torchrun sets, and {', '.join(missing)} "
                "is not set: start the script with torchrun, or leave the environment to be detected"
            )
        world_size = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        return ClusterInfo(
            global_rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
            node_rank=int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", 0))),
            world_size=world_size,
            main_address=os.environ["MASTER_ADDR"],
            main_port=int(os.environ["MASTER_PORT"]),
            creates_processes_externally=True,
            num_nodes=int(os.environ.get("GROUP_WORLD_SIZE", max(1, world_size // max(local_world, 1)))),
        )

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if "WORLD_SIZE" not in os.environ:
            return
        world_size = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", max(1, world_size // max(local_world, 1))))
        check_layout(
            trainer, "torchrun", nodes, world_size,
            f"start torchrun with --nnodes {trainer.num_nodes} --nproc-per-node {trainer.num_processes}",
        )  # fmt: skip

    @hookimpl
    def torchplug_restart_info(self, trainer: Trainer) -> Restart | None:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID")
        if not self.resume_on_restart or not run_id:
            return None
        base = os.path.join(trainer.default_root_dir, "restart", f"torchelastic-{re.sub(r'[^A-Za-z0-9._-]', '_', run_id)}")
        return Restart(
            description=f"torchelastic run {run_id}",
            restarts=int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0),
            record=f"{base}.json",
            checkpoint=f"{base}.ckpt",
        )
