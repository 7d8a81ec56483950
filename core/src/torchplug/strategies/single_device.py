from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug._errors import MisconfigurationError
from torchplug._hooks import hookimpl
from torchplug.strategies import Strategy

if TYPE_CHECKING:
    from torchplug.trainer import Trainer


class SingleDeviceStrategy(Strategy):
    """One process on one device: the core's defaults are all it needs."""

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if trainer.run.num_devices != 1 or trainer.run.num_nodes != 1:
            raise MisconfigurationError(
                f"strategy='single_device' runs one process on one device, but devices={trainer.devices_arg!r} and "
                f"num_nodes={trainer.num_nodes}; use devices=1, or a multi-process strategy such as 'ddp'"
            )
