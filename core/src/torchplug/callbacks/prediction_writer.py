"""``BasePredictionWriter``: write predictions as they are made (per batch), or all of them at the end (per epoch).

Subclass it and implement ``write_on_batch_end`` and/or ``write_on_epoch_end``; with ``trainer.predict(...,
return_predictions=False)`` nothing is kept in memory, so large prediction runs go straight to disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    """Calls ``write_on_batch_end(trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx)``
    after each predict batch (``write_interval="batch"``), ``write_on_epoch_end(trainer, pl_module, predictions,
    batch_indices)`` once at the end (``"epoch"``), or both (``"batch_and_epoch"``).

    ``batch_indices`` are the dataset indices of the samples in the batch (from the loader's sampler; ``None`` for a
    loader without one, such as an iterable dataset); at the epoch's end, a list per dataloader of those lists.
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise MisconfigurationError(
                f"`write_interval` should be one of {list(_INTERVALS)}, got write_interval={write_interval!r}"
            )
        self.interval = write_interval

    def write_on_batch_end(self, trainer: Trainer, pl_module: Module, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:  # fmt: skip
        raise NotImplementedError(f"{type(self).__name__} must implement write_on_batch_end")

    def write_on_epoch_end(self, trainer: Trainer, pl_module: Module, predictions: Any, batch_indices: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement write_on_epoch_end")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.interval in ("batch", "batch_and_epoch"):
            indices = trainer._loop.current_batch_indices if trainer._loop is not None else None
            self.write_on_batch_end(trainer, pl_module, outputs, indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self.interval in ("epoch", "batch_and_epoch"):
            loop = trainer._loop
            predictions = loop.predictions if loop is not None else []
            indices = loop.epoch_batch_indices if loop is not None else []
            self.write_on_epoch_end(trainer, pl_module, predictions, indices)


__all__ = ["BasePredictionWriter"]
