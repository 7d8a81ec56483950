"""The last-resort answers to every firstresult hook: one process, one device, full precision.

Registered first on every trainer's plugin manager and marked ``trylast``, so any selected backend that answers a
hook wins. Nothing here knows which backends are selected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from torchplug._hooks import hookimpl
from torchplug._types import World
from torchplug.utilities import move_data_to_device, requires_closure

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

    from torchplug.trainer import Trainer


class Defaults:
    @hookimpl(trylast=True)
    def torchplug_num_processes(self, trainer: Trainer) -> int:
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
    def torchplug_autocast_device_type(self, trainer: Trainer) -> str:
        return trainer.root_device.type

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
    def torchplug_setup_dataloader(self, trainer: Trainer, dataloader: DataLoader, stage: str) -> DataLoader:
        return dataloader

    @hookimpl(trylast=True)
    def torchplug_batch_to_device(self, trainer: Trainer, batch: Any, device: torch.device) -> Any:
        return move_data_to_device(batch, device)

    @hookimpl(trylast=True)
    def torchplug_convert_batch(self, trainer: Trainer, batch: Any) -> Any:
        return batch

    @hookimpl(trylast=True)
    def torchplug_forward(self, trainer: Trainer, stage: str, args: tuple[Any, ...]) -> Any:
        return trainer._wrapped_module(stage, *args)

    @hookimpl(trylast=True)
    def torchplug_step_output(self, trainer: Trainer, stage: str, output: Any) -> Any:
        return output

    @hookimpl(trylast=True)
    def torchplug_backward(self, trainer: Trainer, loss: torch.Tensor, optimizer: Optimizer | None) -> bool:
        loss.backward()
        return True

    @hookimpl(trylast=True)
    def torchplug_clip_gradients(self, trainer: Trainer, optimizer: Optimizer, clip_val: float, algorithm: str) -> bool:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, clip_val)
        return True

    @hookimpl(trylast=True)
    def torchplug_optimizer_step(self, trainer: Trainer, optimizer: Optimizer, closure: Callable[[], Any]) -> bool:
        if requires_closure(optimizer):  # LBFGS evaluates the closure itself, possibly several times
            optimizer.step(closure)
        else:  # same result, without optimizer.step's closure handling on every step
            closure()
            optimizer.step()
        return True

    @hookimpl(trylast=True)
    def torchplug_all_reduce(self, trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return tensor

    @hookimpl(trylast=True)
    def torchplug_barrier(self, trainer: Trainer, name: str) -> bool:
        return True

    @hookimpl(trylast=True)
    def torchplug_broadcast(self, trainer: Trainer, obj: Any, src: int) -> tuple[Any]:
        return (obj,)
