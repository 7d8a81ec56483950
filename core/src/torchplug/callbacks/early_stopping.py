"""``EarlyStopping``: stop ``fit`` when a monitored metric stops improving."""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback
from torchplug.callbacks.model_checkpoint import _broadcast

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer


class EarlyStoppingReason(Enum):
    """Why an ``EarlyStopping`` callback stopped training (``EarlyStopping.stopping_reason``)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Stop training after ``patience`` checks in a row without an improvement of ``monitor`` (Lightning's names).

    A check happens once per validation run (or per training epoch when the monitor is a training metric and
    there is no validation). An improvement means better than the best value so far by more than ``min_delta``
    in the direction of ``mode``. Training also stops at once when the value is NaN/inf (``check_finite``), reaches
    ``stopping_threshold``, or crosses ``divergence_threshold``. Stopping sets ``trainer.should_stop``; the
    trainer still honours ``min_epochs``/``min_steps``. Rank 0's value decides on every rank.

    After a stop, ``stopping_reason`` (an ``EarlyStoppingReason``) says which rule fired and
    ``stopping_reason_message`` says it in words; both are saved with the callback's state.
    """

    monitors_metrics = True

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise MisconfigurationError(
                f"EarlyStopping(monitor={monitor!r}): name a metric you log with self.log"
            )
        if mode not in ("min", "max"):
            raise MisconfigurationError(
                f"EarlyStopping(mode={mode!r}): `mode` can be 'min' or 'max', got {mode}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise MisconfigurationError(f"EarlyStopping(patience={patience!r}): use an int >= 0")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise MisconfigurationError(
                f"EarlyStopping(min_delta={min_delta!r}): use a number >= 0; the direction comes from mode"
            )
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def _better(self, a: torch.Tensor, b: torch.Tensor | float) -> bool:
        return bool(a < b) if self.mode == "min" else bool(a > b)

    # ---------------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # The epoch-end validation runs before on_train_epoch_end, so checking there sees its metrics as well
            # as training epoch metrics; validation several times per epoch (or every k epochs) is checked after
            # each validation run instead.
            self._check_on_train_epoch_end = (
                getattr(trainer, "val_check_interval", 1.0) == 1.0
                and getattr(trainer, "check_val_every_n_epoch", 1) == 1
            )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self._check_on_train_epoch_end and not self._should_skip(trainer):
            self._run_check(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._check_on_train_epoch_end and not self._should_skip(trainer):
            self._run_check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict.get("patience", self.patience)
        # checkpoints written before the reason was recorded have neither key
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        )
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # ---------------------------------------------------------------------------------------------------- the check
    @staticmethod
    def _should_skip(trainer: Trainer) -> bool:
        return bool(getattr(trainer, "stage", "fit") != "fit" or trainer.sanity_checking)

    def _run_check(self, trainer: Trainer) -> None:
        metrics = trainer.callback_metrics
        if trainer.fast_dev_run:
            return
        if self.monitor not in metrics:
            message = (
                f"EarlyStopping(monitor={self.monitor!r}) could not find {self.monitor!r} in the logged metrics "
                f"{sorted(metrics)}. Log it with self.log({self.monitor!r}, value), or pass strict=False to skip "
                "checks where it is missing"
            )
            if self.strict:
                raise MisconfigurationError(message)
            return
        current = torch.as_tensor(metrics[self.monitor]).detach().float().cpu().reshape(())
        current = _broadcast(trainer, current)  # every rank counts the same way and stops at the same epoch
        should_stop, reason, why = self._evaluate(current)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = why
            self.stopping_reason_message = reason
        if reason and self.verbose and trainer.is_global_zero:
            print(reason, flush=True)

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, str | None, EarlyStoppingReason]:
        """Whether to stop, the message for the log, and the reason (``NOT_STOPPED`` when going on)."""
        best = float(self.best_score)
        going_on = EarlyStoppingReason.NOT_STOPPED
        if self.check_finite and not torch.isfinite(current):
            return (
                True,
                f"EarlyStopping: {self.monitor} = {float(current)} is not finite; the best was {best:.3f}. Stopping.",
                EarlyStoppingReason.NON_FINITE_METRIC,
            )
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold):
            return (
                True,
                f"EarlyStopping: Stopping threshold reached: {self.monitor} = {float(current):.4g} is past "
                f"{self.stopping_threshold} ({self.mode}). Stopping.",
                EarlyStoppingReason.STOPPING_THRESHOLD,
            )
        if self.divergence_threshold is not None and self._better(-current, -self.divergence_threshold):
            return (
                True,
                f"EarlyStopping: Divergence threshold reached: {self.monitor} = {float(current):.4g} is past "
                f"{self.divergence_threshold} the wrong way for mode={self.mode!r}. Stopping.",
                EarlyStoppingReason.DIVERGENCE_THRESHOLD,
            )
        shift = -self.min_delta if self.mode == "min" else self.min_delta
        if self._better(current - shift, self.best_score):
            if math.isfinite(best):
                reason = (
                    f"EarlyStopping: {self.monitor} improved by {abs(best - float(current)):.4g} to "
                    f"{float(current):.4g}"
                )
            else:
                reason = f"EarlyStopping: {self.monitor} = {float(current):.4g} (first value)"
            self.best_score = current
            self.wait_count = 0
            return False, reason, going_on
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return (
                True,
                f"EarlyStopping: {self.monitor} did not improve in the last {self.wait_count} checks; the best was "
                f"{best:.4g}. Stopping.",
                EarlyStoppingReason.PATIENCE_EXHAUSTED,
            )
        return False, None, going_on


__all__ = ["EarlyStopping", "EarlyStoppingReason"]
