"""``strategy="single_xla"``: one process on one XLA device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug import MisconfigurationError, hookimpl
from torchplug.strategies import Strategy
from torchplug_xla import _runtime
from torchplug_xla.strategies._checks import require_xla_accelerator

if TYPE_CHECKING:
    from torchplug import Trainer


class SingleXLAStrategy(Strategy):
    """Trains in this process on one XLA device (``devices=1``, or ``devices=[k]`` for device ``k``).

    On a TPU host the process opens only the chip it trains on, so other jobs can use the other chips.
    """

    # XLA's lazy tensors do not support inference mode (as in Lightning): evaluation runs under no_grad
    supports_inference_mode = False

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        require_xla_accelerator(trainer)
        if trainer.run.num_devices != 1 or trainer.num_nodes != 1:
            raise MisconfigurationError(
                f"strategy='single_xla' runs on one device, but devices={trainer.devices_arg!r} selects "
                f"{trainer.device_ids} on {trainer.num_nodes} node(s); use devices=1 or devices=[k], or "
                "strategy='xla' (one process per device) or 'xla_spmd' for several devices"
            )

    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        _runtime.pin_one_device(trainer.device_ids[0])
