from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from torchplug._hooks import hookimpl
from torchplug.accelerators import Accelerator

if TYPE_CHECKING:
    from torchplug.trainer import Trainer


class CPUAccelerator(Accelerator):
    """The CPU. ``devices=N`` means N processes, so it takes any count (with a multi-process strategy)."""

    device_type = "cpu"
    priority = 0

    @hookimpl
    def torchplug_root_device(self, trainer: Trainer) -> torch.device:
        return torch.device("cpu")
