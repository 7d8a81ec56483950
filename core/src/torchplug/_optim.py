"""Optimizers of a run: what ``configure_optimizers`` returned, the handles the module steps, the schedulers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import MisconfigurationError

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug.module import Module


@dataclass
class LRSchedulerConfig:
    """One LR scheduler and when it steps (Lightning's ``lr_scheduler`` dict keys)."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None


_SCHEDULER_KEYS = {"scheduler", "interval", "frequency", "monitor", "strict", "name"}


def configure_optimizers(model: Module) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Call ``configure_optimizers`` and read every form Lightning accepts."""
    returned = model.configure_optimizers()
    what = f"{type(model).__name__}.configure_optimizers() returned {returned!r}"
    schedulers: list[Any] = []
    if isinstance(returned, torch.optim.Optimizer):
        optimizers = [returned]
    elif isinstance(returned, dict):
        if "optimizer" not in returned:
            raise MisconfigurationError(f"{what}: a dict needs an 'optimizer' key")
        optimizers = [returned["optimizer"]]
        if returned.get("lr_scheduler") is not None:
            schedulers = [returned["lr_scheduler"]]
    elif isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[0], (list, tuple)):
        optimizers = list(returned[0])
        schedulers = list(returned[1]) if isinstance(returned[1], (list, tuple)) else [returned[1]]
    elif isinstance(returned, (list, tuple)) and all(isinstance(o, dict) for o in returned):
        optimizers = [d["optimizer"] for d in returned]
        schedulers = [d["lr_scheduler"] for d in returned if d.get("lr_scheduler") is not None]
    elif isinstance(returned, (list, tuple)):
        optimizers = list(returned)
    else:
        raise MisconfigurationError(
            f"{what}: return an optimizer, a list of them, (optimizers, schedulers), or a dict with 'optimizer' "
            "and optionally 'lr_scheduler'"
        )
    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise MisconfigurationError(f"{what}: {opt!r} is not a torch.optim.Optimizer")
    configs = []
    for item in schedulers:
        if isinstance(item, dict):
            if "scheduler" not in item:
                raise MisconfigurationError(f"{what}: an lr_scheduler dict needs a 'scheduler' key")
            unknown = set(item) - _SCHEDULER_KEYS
            if unknown:
                raise MisconfigurationError(f"{what}: unknown lr_scheduler keys {sorted(unknown)}")
            config = LRSchedulerConfig(**item)
        else:
            config = LRSchedulerConfig(scheduler=item)
        if config.interval not in ("step", "epoch"):
            raise MisconfigurationError(f"{what}: lr_scheduler interval {config.interval!r}; use 'step' or 'epoch'")
        if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and config.monitor is None:
            raise MisconfigurationError(f"{what}: ReduceLROnPlateau needs a 'monitor' key naming a logged metric")
        configs.append(config)
    return optimizers, configs


def repoint_schedulers(configs: list[LRSchedulerConfig], before: list[Any], after: list[Any]) -> None:
    """A precision plugin replaced optimizers (apex): schedulers step the replacements."""
    for old, new in zip(before, after):
        if new is not old:
            for config in configs:
                if getattr(config.scheduler, "optimizer", None) is old:
                    config.scheduler.optimizer = new


def step_schedulers(loop: Loop, interval: str) -> None:
    """Step the schedulers of ``interval`` that are due, through the module's ``lr_scheduler_step``."""
    trainer, module = loop.trainer, loop.module
    for config in trainer.lr_scheduler_configs:
        if config.interval != interval:
            continue
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        if count % config.frequency:
            continue
        metric = None
        if config.monitor is not None:
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                if config.strict:
                    raise MisconfigurationError(
                        f"the LR scheduler monitors {config.monitor!r}, which was not logged; logged: "
                        f"{sorted(trainer.callback_metrics) or 'nothing'}. Log it, or set 'strict': False"
                    )
                continue
        module.lr_scheduler_step(config.scheduler, metric)


class OptimizerHandle:
    """What ``self.optimizers()`` returns, and what ``optimizer_step`` receives: ``step`` runs the run's step
    operations (precision and strategy) around the real optimizer; every other attribute is the optimizer's."""

    def __init__(self, loop: Loop, optimizer: torch.optim.Optimizer) -> None:
        self._loop, self.optimizer = loop, optimizer
        self._closure: Callable[[], Any] | None = None
        self._pending = False
        self._result: Any = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loop = self._loop
        self._closure, self._pending, self._result = closure, True, None
        loop.step_taken = loop.ops.optimizer_step(self.optimizer, self._after_closure)
        if self._pending:
            step = loop.ops.optimizer_step
            raise RuntimeError(
                f"the optimizer step operation {getattr(step, '__module__', '?')}.{getattr(step, '__qualname__', step)} "
                "returned without calling its closure, so the batch was not trained; a step operation must call the "
                "closure it is given (StepOps.optimizer_step)"
            )
        if not loop.module.automatic_optimization:
            loop.trainer.global_step += 1  # manual optimization counts optimizer steps, as in Lightning
        return self._result

    def _after_closure(self) -> Any:
        """The user's closure (forward and backward), then gradients made final, the hooks and clipping.

        Optimizers such as LBFGS call it several times per step; each call runs all of it again.
        """
        self._pending = False
        closure = self._closure
        self._result = loss = closure() if closure is not None else None
        # between the closure and the step: final gradients, on_before_optimizer_step, clipping
        loop, optimizer = self._loop, self.optimizer
        loop.ops.prepare_gradients(optimizer)
        if loop.pre_step_hooks:
            loop.call("on_before_optimizer_step", optimizer)
        if loop.clip and loop.module.automatic_optimization:
            trainer = loop.trainer
            loop.module.configure_gradient_clipping(optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Without arguments where possible: optimizer wrappers (apex O2) patch zero_grad with no set_to_none.
        self.optimizer.zero_grad() if set_to_none else self.optimizer.zero_grad(set_to_none=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"
