from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

    def get_device_stats(self, device: Any) -> dict[str, float]:
        """The machine's memory, CPU and swap use in percent (Lightning's keys), read with ``psutil``."""
        try:
            import psutil
        except ImportError:
            raise ModuleNotFoundError(
                "CPUAccelerator.get_device_stats reads the CPU's figures with psutil, which is not installed: "
                "pip install 'torchplug[stats]' (or pip install psutil)"
            ) from None
        return {
            "cpu_vm_percent": psutil.virtual_memory().percent,
            "cpu_percent": psutil.cpu_percent(),
            "cpu_swap_percent": psutil.swap_memory().percent,
        }
