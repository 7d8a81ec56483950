"""Accelerators: which device a process computes on. One file per backend; ``cpu`` is built in."""

from __future__ import annotations

from typing import Any, ClassVar

from torchplug._hooks import hookimpl


class Accelerator:
    """Base for accelerator plugins; subclasses add ``@hookimpl`` methods (``torchplug_root_device`` at least).

    Capabilities, declared on the class and read without an instance:

    * ``device_type``: the torch device type this accelerator computes on (``"cuda"``, ``"cpu"``, ``"xla"``).
      Other backends decide compatibility on it (``trainer.run.device_type``), never on the accelerator's name.
    * ``priority``: orders installed accelerators for ``accelerator="auto"``: the available one with the highest
      priority wins.
    * ``is_available()``: whether this machine can run it. Must be cheap, must not raise, and must not import
      heavy optional dependencies when they are absent: ``accelerator="auto"`` calls it for every installed
      accelerator.
    * ``device_count()``: devices on this machine (``None``: any number, as on the CPU, where ``devices=N``
      means N processes). The one device-count API: selection, ``auto`` and ``torchplug plugins`` all use it.

    Keyword arguments of ``__init__`` are filled from ``Trainer(**kwargs)`` by name; prefix them with the
    accelerator's name where a plain name could clash with another backend's option.
    """

    device_type: ClassVar[str]
    priority: ClassVar[int] = 0

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int | None:
        return None

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        """Usage figures of ``device`` for monitoring (memory, utilisation), by name; none by default."""
        return {}

    @hookimpl
    def torchplug_default_strategy(self, device_ids: list[int], num_nodes: int) -> str:
        """One device on one node needs no process group; anything more is data parallel, one process per device."""
        return "single_device" if len(device_ids) == 1 and num_nodes == 1 else "ddp"


# The built-in accelerator, importable from here as the base is (``cpu`` imports the base above).
from torchplug.accelerators.cpu import CPUAccelerator  # noqa: E402

__all__ = ["Accelerator", "CPUAccelerator"]
