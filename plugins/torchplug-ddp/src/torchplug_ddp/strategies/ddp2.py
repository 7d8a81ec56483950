"""``ddp2``: one process per node; inside it DataParallel splits each batch over the node's devices, and
DistributedDataParallel synchronises gradients across nodes.

On the CPU a node has one device (there is nothing for DataParallel to split over), so ``ddp2`` there is one
process per node with DDP across nodes, and ``devices`` must be 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchplug import ClusterInfo, MisconfigurationError, hookimpl
from torchplug_ddp.strategies.ddp import DDPStrategy

if TYPE_CHECKING:
    from torchplug import Trainer


class DDP2Strategy(DDPStrategy):
    def _reset(self) -> None:
        super()._reset()
        self._replicas = 1

    @hookimpl
    def torchplug_num_processes(self, trainer: Trainer) -> int:
        return 1

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if self._device_type(trainer) == "cpu" and len(trainer.device_ids) != 1:
            raise MisconfigurationError(
                f"strategy='ddp2' with accelerator='cpu' and devices={trainer.devices_arg!r}: on the CPU ddp2 runs one "
                "process with one device per node (DataParallel has nothing to split over). Pass devices=1 and "
                "num_nodes=<nodes>, or use strategy='ddp_cpu' for several CPU processes per node"
            )
        super().torchplug_configure(trainer)  # ddp's own checks (backend, sync_batchnorm)

    def _local_device_index(self, info: ClusterInfo) -> int:
        return 0  # the one process of the node drives every device of it; the first is its root device

    def _replica(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        if self._device_type(trainer) == "cuda" and len(trainer.device_ids) > 1:
            self._replicas = len(trainer.device_ids)
            return nn.DataParallel(module, device_ids=list(trainer.device_ids), output_device=trainer.device_ids[0])
        return module

    def _ddp_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        kwargs = super()._ddp_kwargs(trainer)
        if self._replicas > 1:  # DDP around a module spanning several devices takes no device_ids
            kwargs["device_ids"] = None
        return kwargs

    @hookimpl
    def torchplug_batch_to_device(self, trainer: Trainer, batch: Any, device: torch.device) -> Any:
        # DataParallel scatters the host batch straight to each device; copying it to the first one would be waste
        return batch if self._replicas > 1 else None

    @hookimpl
    def torchplug_step_output(self, trainer: Trainer, stage: str, output: Any) -> Any:
        """DataParallel gathers one loss per device into a vector: average it back into one value."""
        if self._replicas <= 1:
            return None
        from torchplug.utilities import apply_to_collection

        def mean(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.dim() == 1 and tensor.shape[0] == self._replicas and tensor.is_floating_point():
                return tensor.mean()
            return tensor

        return apply_to_collection(output, torch.Tensor, mean)
