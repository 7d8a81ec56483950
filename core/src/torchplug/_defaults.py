"""The last-resort answers to every firstresult hook: one process, one device, full precision.

Registered first on every trainer's plugin manager and marked ``trylast``, so any selected backend that answers a
hook wins. Nothing here knows which backends are selected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from torchplug import _checkpoint
from torchplug._devices import parse_devices
from torchplug._hooks import hookimpl
from torchplug._step import StepOps, default_step_ops
from torchplug._types import World

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

    from torchplug.trainer import Trainer


class Defaults:
    @hookimpl(trylast=True)
    def torchplug_select_devices(self, devices: Any, device_count: int | None, device_type: str) -> list[int]:
        return parse_devices(devices, device_count, device_type)

    @hookimpl(trylast=True)
    def torchplug_num_processes(self, device_ids: list[int], num_nodes: int) -> int:
        return 1

    @hookimpl(trylast=True)
    def torchplug_launch(self, trainer: Trainer, function: Callable[[], Any]) -> tuple[Any]:
        return (function(),)

    @hookimpl(trylast=True)
    def torchplug_world(self, trainer: Trainer) -> World:
        return World()

    @hookimpl(trylast=True)
    def torchplug_root_device(self, trainer: Trainer) -> torch.device:
        return torch.device("cpu")

    @hookimpl(trylast=True)
    def torchplug_convert_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        return module

    @hookimpl(trylast=True)
    def torchplug_setup_optimizers(
        self, trainer: Trainer, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        return module, optimizers

    @hookimpl(trylast=True)
    def torchplug_wrap_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        return module

    @hookimpl(trylast=True)
    def torchplug_step_ops(self, trainer: Trainer) -> StepOps:
        return default_step_ops(trainer, trainer.model)

    @hookimpl(trylast=True)
    def torchplug_setup_dataloader(self, trainer: Trainer, dataloader: DataLoader, stage: str) -> DataLoader:
        return dataloader

    @hookimpl(trylast=True)
    def torchplug_all_reduce(self, trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return tensor

    @hookimpl(trylast=True)
    def torchplug_all_gather(self, trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unsqueeze(0)

    @hookimpl(trylast=True)
    def torchplug_barrier(self, trainer: Trainer, name: str) -> bool:
        return True

    @hookimpl(trylast=True)
    def torchplug_broadcast(self, trainer: Trainer, obj: Any, src: int) -> tuple[Any]:
        return (obj,)

    @hookimpl(trylast=True)
    def torchplug_gather_objects(self, trainer: Trainer, obj: Any) -> list[Any]:
        return [obj]

    # ---------------------------------------------------------------------------------------- checkpoints
    @hookimpl(trylast=True)
    def torchplug_model_state_dict(self, trainer: Trainer, module: nn.Module) -> dict[str, Any]:
        return module.state_dict()

    @hookimpl(trylast=True)
    def torchplug_optimizer_state_dict(self, trainer: Trainer, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    @hookimpl(trylast=True)
    def torchplug_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any], path: str) -> bool:
        if "ranks" in checkpoint:  # every rank's own state goes into the one file rank 0 writes
            ranks = trainer.hook.torchplug_gather_objects(trainer=trainer, obj=checkpoint["ranks"][0])
            checkpoint = {**checkpoint, "ranks": ranks}
        if trainer.is_global_zero:
            _checkpoint.atomic_save(checkpoint, path)
        return True

    @hookimpl(trylast=True)
    def torchplug_load_checkpoint(self, trainer: Trainer, path: str) -> dict[str, Any]:
        return _checkpoint.load_checkpoint(path)

    @hookimpl(trylast=True)
    def torchplug_load_model_state_dict(self, trainer: Trainer, module: nn.Module, state_dict: dict[str, Any]) -> bool:
        # the module's strict_loading decides, as in Lightning (False: missing and unexpected keys are allowed)
        module.load_state_dict(state_dict, strict=getattr(module, "strict_loading", True))
        return True

    @hookimpl(trylast=True)
    def torchplug_load_optimizer_state_dict(
        self, trainer: Trainer, optimizer: Optimizer, state_dict: dict[str, Any]
    ) -> bool:
        optimizer.load_state_dict(state_dict)
        return True
