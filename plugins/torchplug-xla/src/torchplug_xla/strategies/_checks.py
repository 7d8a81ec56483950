from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug import MisconfigurationError

if TYPE_CHECKING:
    from torchplug import Trainer


def require_xla_accelerator(trainer: Trainer) -> None:
    """XLA strategies drive XLA devices only: refuse another accelerator at construction, naming what works."""
    if trainer.run.device_type != "xla":
        raise MisconfigurationError(
            f"strategy={trainer.strategy_name!r} runs on XLA devices, but accelerator={trainer.accelerator_name!r} "
            f"computes on {trainer.run.device_type!r}; use accelerator='tpu' (or 'xla') with it, or another "
            f"strategy for {trainer.accelerator_name!r}"
        )
