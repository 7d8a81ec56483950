"""Strategies: how many processes, and how they share the work. ``single_device`` is built in."""

from __future__ import annotations

from typing import ClassVar

from torchplug.strategies._step_module import StepModule


class Strategy:
    """Base for strategy plugins; subclasses add ``@hookimpl`` methods for the hooks where they differ.

    ``needs_cluster_environment``: the strategy reads :func:`~torchplug.hookspecs.torchplug_cluster_info` even
    for a job of one process (a process group of one), so selection finds a cluster environment for it.
    ``supports_inference_mode``: evaluation may run under ``torch.inference_mode()`` (``Trainer(inference_mode=True)``,
    the default); a strategy whose wrapped module cannot (parameters gathered into inference tensors) sets it False
    and evaluation runs under ``torch.no_grad()``.
    Keyword arguments of ``__init__`` are filled from ``Trainer(**kwargs)`` by name (``find_unused_parameters``).
    :class:`torchplug.distributed.ProcessGroupStrategy` is the base of strategies with a process group.
    """

    needs_cluster_environment: ClassVar[bool] = False
    supports_inference_mode: ClassVar[bool] = True

    @classmethod
    def is_available(cls) -> bool:
        return True


# The built-in strategy, importable from here as the base is (``single_device`` imports the base above).
from torchplug.strategies.single_device import SingleDeviceStrategy  # noqa: E402

__all__ = ["SingleDeviceStrategy", "StepModule", "Strategy"]
