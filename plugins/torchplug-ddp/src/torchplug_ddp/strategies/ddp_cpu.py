"""``ddp_cpu``: ``ddp`` with N processes on the CPU and gloo, the way to debug distributed code without GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug import MisconfigurationError, hookimpl
from torchplug_ddp.strategies.ddp import DDPStrategy

if TYPE_CHECKING:
    from torchplug import Trainer


class DDPCPUStrategy(DDPStrategy):
    """``Trainer(strategy="ddp_cpu", devices=N)``: the same as ``accelerator="cpu", strategy="ddp", devices=N``."""

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if trainer.run.device_type != "cpu":
            raise MisconfigurationError(
                f"strategy='ddp_cpu' runs on the CPU, but accelerator={trainer.accelerator_name!r} computes on "
                f"{trainer.run.device_type!r}: pass accelerator='cpu' (or use strategy='ddp' to train on "
                f"{trainer.accelerator_name})"
            )
        if self.process_group_backend not in (None, "gloo"):
            raise MisconfigurationError(
                f"process_group_backend={self.process_group_backend!r}: strategy='ddp_cpu' communicates with 'gloo'"
            )
        super().torchplug_configure(trainer)  # ddp's own checks (backend, timeout, sync_batchnorm)
