"""``ddp2``: one process per node; inside it DataParallel splits each batch over the node's devices, and
DistributedDataParallel synchronises gradients across nodes.

On the CPU a node has one device (there is nothing for DataParallel to split over), so ``ddp2`` there is one
process per node with DDP across nodes, and ``devices`` must be 1.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.utilities import apply_to_collection
from torchplug_ddp.strategies.ddp import DDPStrategy

if TYPE_CHECKING:
    from torchplug import Trainer


class DDP2Strategy(DDPStrategy):
    def _reset(self) -> None:
        super()._reset()
        self._replicas = 1

    @hookimpl
    def torchplug_num_processes(self, device_ids: list[int], num_nodes: int) -> int:
        return 1

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if trainer.run.device_type == "cpu" and trainer.run.num_devices != 1:
            raise MisconfigurationError(
                f"strategy='ddp2' on the CPU with devices={trainer.devices_arg!r}: on the CPU ddp2 runs one process with "
                "one device per node (DataParallel has nothing to split over). Pass devices=1 and num_nodes=<nodes>, "
                "or use strategy='ddp_cpu' for several CPU processes per node"
            )
        super().torchplug_configure(trainer)  # ddp's own checks (backend, sync_batchnorm)

    def wrap(self, trainer: Trainer, module: nn.Module) -> DistributedDataParallel:
        kwargs = self.ddp_kwargs(trainer)
        if trainer.run.device_type == "cuda" and trainer.run.num_devices > 1:
            self._replicas = trainer.run.num_devices
            module = nn.DataParallel(module, device_ids=trainer.device_ids, output_device=trainer.device_ids[0])
            kwargs["device_ids"] = None  # DDP around a module spanning several devices takes no device_ids
        return DistributedDataParallel(module, **kwargs)

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        # This method replaces ddp's on the plugin manager (one implementation per plugin object): take ddp's
        # changes (no_sync) first, then add DataParallel's.
        ops = yield from super().torchplug_step_ops(trainer)
        if self._replicas <= 1:
            return ops
        replicas, forward = self._replicas, ops.forward

        def mean_per_device(tensor: torch.Tensor) -> torch.Tensor:
            """DataParallel gathers one loss per device into a vector: average it back into one value."""
            if tensor.dim() == 1 and tensor.shape[0] == replicas and tensor.is_floating_point():
                return tensor.mean()
            return tensor

        def forward_and_combine(stage: str, args: tuple[Any, ...]) -> Any:
            return apply_to_collection(forward(stage, args), torch.Tensor, mean_per_device)

        # DataParallel scatters the host batch straight to each device; copying it to the first one would be waste
        ops.to_device = _unchanged
        ops.forward = forward_and_combine
        return ops


def _unchanged(batch: Any) -> Any:
    return batch
