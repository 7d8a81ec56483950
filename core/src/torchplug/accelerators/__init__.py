"""Accelerators: which device a process computes on. One file per backend; ``cpu`` is built in."""

from __future__ import annotations

from typing import ClassVar


class Accelerator:
    """Base for accelerator plugins; subclasses add ``@hookimpl`` methods (``torchplug_root_device`` at least).

    ``priority`` orders installed accelerators for ``accelerator="auto"``: the available one with the highest
    priority wins. ``is_available`` must be cheap and must not import heavy optional dependencies when they are
    absent. Keyword arguments of ``__init__`` are filled from ``Trainer(**kwargs)`` by name.
    """

    priority: ClassVar[int] = 0

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int | None:
        """Devices on this machine; ``None`` means any number (the CPU). Used by the CLI and ``auto``."""
        return None


__all__ = ["Accelerator"]
