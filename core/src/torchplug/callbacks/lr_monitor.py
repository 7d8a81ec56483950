"""``LearningRateMonitor``: log each optimizer's learning rate to the loggers."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from torchplug.module import Module
    from torchplug.trainer import Trainer


class LearningRateMonitor(Callback):
    """Log learning rates under Lightning's names: ``lr-<OptimizerName>``; a second optimizer of the same class is
    ``lr-<Name>-1``, a third ``-2``; a scheduler with a ``"name"`` in its ``lr_scheduler`` dict is logged under that
    name; several param groups get ``/pg1``, ``/pg2``... (or ``/<name>`` when a group has a ``"name"`` key, also for a
    single group). Schedulers' optimizers come first, then the optimizers without one.

    With ``logging_interval=None`` a scheduler's rate is logged at its own interval (at the trainer's logging steps
    for ``"step"`` schedulers, at each epoch's start for ``"epoch"`` ones) and optimizers without a scheduler at the
    logging steps; ``"step"`` or ``"epoch"`` logs everything at that interval. ``log_momentum`` adds
    ``<name>-momentum`` (``betas[0]`` for Adam-like optimizers, 0 for one without momentum), ``log_weight_decay``
    ``<name>-weight_decay``. The values also go to ``trainer.callback_metrics`` (EarlyStopping can monitor them);
    ``lrs``, ``last_momentum_values`` and ``last_weight_decay_values`` keep what was logged.
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationError(
                f"logging_interval should be `step` or `epoch` or `None`: LearningRateMonitor(logging_interval="
                f"{logging_interval!r})"
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}
        self._last_step_logged = -1

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        if not trainer.loggers:
            raise MisconfigurationError(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger (logger=False): drop the "
                "callback or enable a logger"
            )
        tracked = self._tracked(trainer)
        if self.log_momentum and any("momentum" not in opt.defaults and "betas" not in opt.defaults
                                     for _, opt, _ in tracked):  # fmt: skip
            warnings.warn(
                "You have set log_momentum=True, but some optimizers do not have momentum. This will log a value 0 "
                "for the momentum.",
                RuntimeWarning,
                stacklevel=2,
            )
        keys = [key for names, _, _ in tracked for key in names]
        self.lrs = {key: [] for key in keys}
        self.last_momentum_values = {f"{key}-momentum": None for key in keys}
        self.last_weight_decay_values = {f"{key}-weight_decay": None for key in keys}

    def on_train_batch_start(self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int) -> None:
        every = trainer.log_every_n_steps
        # The rate about to be used by optimizer step `step + 1`, logged where the trainer logs that step's loss.
        step = _logging_step(trainer)
        if self.logging_interval == "epoch" or not every or ((step + 1) % every and not trainer.should_stop):
            return
        if step == self._last_step_logged:  # with gradient accumulation several batches share one step
            return
        self._last_step_logged = step
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    # ---------------------------------------------------------------------------------------------------- helpers
    def _log(self, trainer: Trainer, interval: str) -> None:
        stats: dict[str, float] = {}
        for names, optimizer, when in self._tracked(trainer):
            if interval != "any" and when not in (interval, None):  # without a scheduler: at every logging point
                continue
            uses_betas = "betas" in optimizer.defaults
            self._follow_added_groups(names)
            for key, group in zip(names, optimizer.param_groups):
                stats[key] = group["lr"]
                self.lrs.setdefault(key, []).append(group["lr"])
                if self.log_momentum:
                    momentum = group["betas"][0] if uses_betas else group.get("momentum", 0)
                    stats[f"{key}-momentum"] = self.last_momentum_values[f"{key}-momentum"] = momentum
                if self.log_weight_decay:
                    decay = group["weight_decay"]
                    stats[f"{key}-weight_decay"] = self.last_weight_decay_values[f"{key}-weight_decay"] = decay
        if not stats:
            return
        device = trainer.root_device
        trainer.callback_metrics.update({k: torch.tensor(float(v), device=device) for k, v in stats.items()})
        trainer._log_to_loggers(stats, _logging_step(trainer))

    def _follow_added_groups(self, names: list[str]) -> None:
        """An optimizer that got param groups (a finetuning callback's) is named per group from then on: its history
        so far continues under its first group's name."""
        if len(names) < 2 or names[0] in self.lrs:
            return
        single = names[0].rsplit("/", 1)[0]
        if single in self.lrs:
            self.lrs[names[0]] = self.lrs.pop(single)

    @staticmethod
    def _tracked(trainer: Trainer) -> list[tuple[list[str], Optimizer, str | None]]:
        """(names of the param groups, optimizer, interval): schedulers' optimizers, then those without one."""
        entries: list[tuple[str | None, Optimizer, str | None]] = []
        for config in trainer.lr_scheduler_configs:
            entries.append((config.name, config.scheduler.optimizer, config.interval))
        scheduled = {id(optimizer) for _, optimizer, _ in entries}
        entries += [(None, o, None) for o in trainer.optimizers if id(o) not in scheduled]
        seen: Counter[type] = Counter()
        tracked = []
        for name, optimizer, interval in entries:
            if name is None:
                kind = type(optimizer)
                seen[kind] += 1
                name = f"lr-{kind.__name__}" + (f"-{seen[kind] - 1}" if seen[kind] > 1 else "")
            tracked.append((_group_names(name, optimizer), optimizer, interval))
        return tracked


def _logging_step(trainer: Trainer) -> int:
    """The loggers' step: batches that stepped so far (with manual optimization, batches)."""
    loop = getattr(trainer, "_loop", None)
    return loop._batches_stepped() if loop is not None else trainer.global_step


def _group_names(name: str, optimizer: Optimizer) -> list[str]:
    groups = optimizer.param_groups
    labels = [group.get("name", f"pg{i + 1}") for i, group in enumerate(groups)]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise MisconfigurationError(
            "A single `Optimizer` cannot have multiple parameter groups with identical `name` values. "
            f"{name} has duplicated parameter group names {duplicated}"
        )
    if len(groups) > 1:
        return [f"{name}/{label}" for label in labels]
    return [f"{name}/{groups[0]['name']}" if "name" in groups[0] else name]


__all__ = ["LearningRateMonitor"]
