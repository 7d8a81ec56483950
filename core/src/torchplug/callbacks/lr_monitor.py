"""``LearningRateMonitor``: log each optimizer's learning rate to the loggers."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from torchplug.module import Module
    from torchplug.trainer import Trainer


class LearningRateMonitor(Callback):
    """Log learning rates as ``lr-<OptimizerName>`` (Lightning's names), per param group ``/pg1``, ``/pg2``...

    A scheduler with a ``"name"`` in its ``lr_scheduler`` dict is logged under that name; two optimizers of the same
    class get ``-1``, ``-2`` suffixes; a param group with a ``"name"`` key is logged under it. With
    ``logging_interval=None`` a scheduler's rate is logged at its own interval (each ``log_every_n_steps`` steps
    for ``"step"`` schedulers, each epoch for ``"epoch"`` ones) and optimizers without a scheduler every
    ``log_every_n_steps`` steps; ``"step"`` or ``"epoch"`` logs everything at that interval. ``log_momentum``
    adds ``<name>-momentum`` (``betas[0]`` for Adam-like optimizers), ``log_weight_decay`` ``<name>-weight_decay``.
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): use None, 'step' or 'epoch'"
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self._last_step_logged = -1

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        if not trainer.loggers:
            raise MisconfigurationError(
                "LearningRateMonitor needs a logger to write to, and the Trainer has none (logger=False); "
                "drop the callback or enable a logger"
            )
        self.lrs = {name: [] for name, _, _ in self._tracked(trainer)}

    def on_train_batch_start(self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        step = trainer.global_step
        # The rate about to be used by optimizer step `step + 1`, logged where the trainer logs that step's loss.
        if (step + 1) % trainer.log_every_n_steps != 0 or step == self._last_step_logged:
            return
        self._last_step_logged = step  # with gradient accumulation several batches share one step
        self._log(trainer, "step" if self.logging_interval is None else "any", step)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self.logging_interval == "step":
            return
        self._log(trainer, "epoch" if self.logging_interval is None else "any", trainer.global_step)

    # ---------------------------------------------------------------------------------------------------- helpers
    def _log(self, trainer: Trainer, interval: str, step: int) -> None:
        stats: dict[str, float] = {}
        for name, optimizer, when in self._tracked(trainer):
            if interval != "any" and when != interval:
                continue
            for i, group in enumerate(optimizer.param_groups):
                key = self._group_name(name, optimizer, i)
                stats[key] = float(group["lr"])
                self.lrs.setdefault(key, []).append(stats[key])
                if self.log_momentum:
                    momentum = group.get("betas", (group.get("momentum", 0.0),))[0]
                    stats[f"{key}-momentum"] = float(momentum)
                if self.log_weight_decay:
                    stats[f"{key}-weight_decay"] = float(group.get("weight_decay", 0.0))
        if stats and trainer.is_global_zero:
            trainer._log_to_loggers(stats, step)

    @staticmethod
    def _group_name(name: str, optimizer: Optimizer, index: int) -> str:
        group = optimizer.param_groups[index]
        if "name" in group:
            return f"{name}/{group['name']}"
        return f"{name}/pg{index + 1}" if len(optimizer.param_groups) > 1 else name

    @staticmethod
    def _tracked(trainer: Trainer) -> list[tuple[str, Optimizer, str]]:
        """(name, optimizer, interval) for every optimizer; those without a scheduler log per step."""
        entries: list[tuple[str | None, Optimizer, str]] = []
        scheduled: set[int] = set()
        for config in trainer.lr_scheduler_configs:
            optimizer = config.scheduler.optimizer
            scheduled.add(id(optimizer))
            entries.append((config.name, optimizer, config.interval))
        for optimizer in trainer.optimizers:
            if id(optimizer) not in scheduled:
                entries.append((None, optimizer, "step"))
        default_names = [f"lr-{type(opt).__name__}" for name, opt, _ in entries if name is None]
        counts, seen = Counter(default_names), Counter()
        named: list[tuple[str, Optimizer, str]] = []
        for name, optimizer, interval in entries:
            if name is None:
                name = f"lr-{type(optimizer).__name__}"
                if counts[name] > 1:
                    seen[name] += 1
                    name = f"{name}-{seen[name]}"
            named.append((name, optimizer, interval))
        return named


__all__ = ["LearningRateMonitor"]
