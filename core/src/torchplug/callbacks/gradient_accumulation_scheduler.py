"""``GradientAccumulationScheduler``: change ``trainer.accumulate_grad_batches`` from epoch to epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback
from torchplug.utilities import rank_zero_warn

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer


class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over ``scheduling[epoch]`` batches from that (0-based) epoch on (Lightning's name).

    ``GradientAccumulationScheduler({0: 1, 4: 2})`` steps the optimizer on every batch for epochs 0-3 and every
    second batch from epoch 4. Epochs before the smallest key accumulate 1 batch. The factor is set at the start
    of each training epoch; it needs automatic optimization and ``Trainer(accumulate_grad_batches=1)`` (the
    callback replaces that argument).
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not isinstance(scheduling, dict) or not scheduling:
            raise TypeError(
                f"GradientAccumulationScheduler(scheduling={scheduling!r}): give a non-empty dict "
                "{epoch: batches to accumulate}, e.g. {0: 1, 4: 2}"
            )
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in scheduling):
            raise MisconfigurationError(
                f"GradientAccumulationScheduler: Epoch should be an int >= 0 (0-based); got keys {list(scheduling)}"
            )
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in scheduling.values()):
            raise MisconfigurationError(
                "GradientAccumulationScheduler: Accumulation factor should be an int >= 1 (batches per optimizer "
                f"step); got values {list(scheduling.values())}"
            )
        self.scheduling = {0: 1, **scheduling} if 0 not in scheduling else dict(scheduling)
        self.epochs = sorted(self.scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether some epoch accumulates more than one batch."""
        return any(factor > 1 for factor in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor in force at ``epoch``: the value of the largest key that is <= ``epoch``."""
        return self.scheduling[max(e for e in self.epochs if e <= epoch)]

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "Automatic gradient accumulation and the `GradientAccumulationScheduler` do not work with manual "
                "optimization (self.automatic_optimization = False): remove the callback, or accumulate yourself "
                "in training_step"
            )
        from torchplug.module import Module

        overridden = [
            name
            for name in ("optimizer_step", "optimizer_zero_grad")
            if getattr(type(pl_module), name, None) is not getattr(Module, name, None)
        ]
        if overridden and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                f"{type(pl_module).__name__} overrides {' and '.join(overridden)} and GradientAccumulationScheduler "
                "accumulates batches: the hooks will not be called on every batch (they are called once per "
                "optimizer step)."
            )
        # 1 is the trainer's own value; the factor this callback set in an earlier fit() may still be there
        if trainer.accumulate_grad_batches not in (1, getattr(self, "_set", 1)):
            raise ValueError(
                "You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler` "
                f"callback, which sets it per epoch: remove Trainer(accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}) or the callback"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        trainer.accumulate_grad_batches = self._set = self.get_accumulate_grad_batches(trainer.current_epoch)



__all__ = ["GradientAccumulationScheduler"]
