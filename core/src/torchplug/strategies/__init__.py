"""Strategies: how many processes, and how they share the work. ``single_device`` is built in."""

from __future__ import annotations

from torchplug.strategies._step_module import StepModule


class Strategy:
    """Base for strategy plugins; subclasses add ``@hookimpl`` methods for the hooks where they differ.

    Keyword arguments of ``__init__`` are filled from ``Trainer(**kwargs)`` by name (``find_unused_parameters``).
    """

    @classmethod
    def is_available(cls) -> bool:
        return True


__all__ = ["StepModule", "Strategy"]
