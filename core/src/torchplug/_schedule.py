"""What ``fit`` reads and when: loading (and reloading) the training and validation data, when to validate, when
to stop. Part of :class:`torchplug._loop.Loop`, whose attributes it uses."""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from typing import TYPE_CHECKING, Any

from torchplug import _data
from torchplug._errors import MisconfigurationError, PossibleUserWarning

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")


def overrides(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` has its own ``name``: set on the instance, or defined by a subclass of ``base``. A wrapper set
    on the instance around the base class's own method (``functools.update_wrapper``) is not an override."""
    attr = vars(obj).get(name) if hasattr(obj, "__dict__") else None
    if attr is not None:
        inner = inspect.unwrap(attr) if callable(attr) else attr
        return getattr(inner, "__func__", inner) is not getattr(base, name, None)
    return getattr(type(obj), name, None) is not getattr(base, name, None)


def implements(module: Module, name: str) -> bool:
    """The module implements ``name`` (a step set to ``None`` on the instance is none)."""
    from torchplug.module import Module

    return getattr(module, name, None) is not None and overrides(module, name, Module)


class Schedule:
    """Data loading and the validation/stop schedule of ``fit``."""

    trainer: Trainer

    # ---------------------------------------------------------------------------------------------------- data
    def load_train_data(self) -> None:
        """Ask for the training data (again, at the epochs ``reload_dataloaders_every_n_epochs`` selects)."""
        trainer = self.trainer
        data = _data.source(trainer, "train", self.given["train"], "fit")
        if data is None:
            raise _data.missing("train", "fit")
        loader = _data.combined(trainer, data, "fit", "max_size_cycle", "train")
        if trainer.overfit_batches > 0:
            _data.without_shuffling(loader, "train")
        trainer.num_training_batches = _data.num_batches(loader, trainer.limit_train_batches, "limit_train_batches")
        if loader.mode == "sequential":
            raise MisconfigurationError(
                '`FitLoop` does not support the `CombinedLoader(mode="sequential")` mode: training reads its loaders '
                'together; use mode="max_size_cycle", "min_size" or "max_size"'
            )
        log_every = trainer.log_every_n_steps
        if trainer.loggers and 0 < trainer.num_training_batches < log_every and not trainer.fast_dev_run:
            warnings.warn(
                f"The number of training batches ({trainer.num_training_batches}) is smaller than the logging interval "
                f"Trainer(log_every_n_steps={log_every}). Set a lower value for log_every_n_steps if you want to see "
                "logs for the training epoch.",
                PossibleUserWarning,
                stacklevel=2,
            )
        self.train_loader, trainer._data["train"] = loader, loader.iterables
        self.train_takes_iterator = _data.takes_iterator(self.module.training_step)
        self.train_loaded_at = trainer.current_epoch

    def _should_reload_train(self) -> bool:
        every = self.trainer.reload_dataloaders_every_n_epochs
        return self.train_loader is None or (every > 0 and self.trainer.current_epoch - self.train_loaded_at >= every)

    def _validation_configured(self) -> bool:
        """Lightning's ``enable_validation``: a validation step, validation data somewhere, and batches to take."""
        trainer = self.trainer
        if not implements(self.module, "validation_step") or trainer.limit_val_batches == 0:
            return False
        if self.given["val"] is not None:
            return True
        owners = (trainer.datamodule, self.module)
        return any(o is not None and _data._implemented(o, "val_dataloader") for o in owners)

    def _load_val_data(self) -> None:
        trainer = self.trainer
        data = _data.source(trainer, "val", self.given["val"], "fit")
        self.val_plan = [] if data is None else self.eval_plan(data, "val", "fit", trainer.limit_val_batches)
        if not trainer.sanity_checking or self._val_due_this_epoch():
            self.val_loaded_at = trainer.current_epoch

    def _should_reload_val(self) -> bool:
        every, epoch = self.trainer.reload_dataloaders_every_n_epochs, self.trainer.current_epoch
        loaded_at = self.val_loaded_at
        return self.val_plan is None or (every > 0 and (loaded_at is None or epoch - loaded_at >= every))

    # ---------------------------------------------------------------------------------------------------- schedule
    def _fit_done(self) -> bool:
        trainer = self.trainer
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return True
        if trainer.max_epochs != -1 and trainer.current_epoch >= trainer.max_epochs:
            return True
        if not trainer.should_stop:
            return False
        if self._min_reached():
            return True
        if not getattr(self, "told_min_not_met", False):
            self.told_min_not_met = True
            log.info(
                "Trainer was signaled to stop but the required `min_epochs=%r` or `min_steps=%r` has not been met. "
                "Training will continue...", trainer.min_epochs, trainer.min_steps,
            )  # fmt: skip
        return False

    def _min_reached(self) -> bool:
        trainer = self.trainer
        epochs_ok = trainer.min_epochs is None or trainer.current_epoch >= trainer.min_epochs
        steps_ok = trainer.min_steps is None or trainer.global_step >= trainer.min_steps
        return epochs_ok and steps_ok

    def _epoch_complete(self) -> bool:
        """The epoch ran all its batches (not stopped early by max_steps or should_stop)."""
        progress, total = self.trainer.progress, self.trainer.num_training_batches
        return progress.batches_done >= total or bool(self.trainer._is_last_batch)

    def _val_check_batch(self) -> int | float:
        trainer = self.trainer
        interval, n = trainer.val_check_interval, trainer.num_training_batches
        if not self.val_enabled or trainer._val_check_seconds is not None or self.train_takes_iterator:
            return math.inf  # no validation; time-based (_val_due asks the clock); steps reading the iterator: at the end
        if isinstance(interval, float):
            if n == math.inf:
                if interval != 1.0:
                    raise MisconfigurationError(
                        f"val_check_interval={interval!r}: a fraction needs a training dataloader with a length"
                    )
                return math.inf
            return max(1, int(n * interval))
        if trainer.check_val_every_n_epoch is not None and n != math.inf and interval > n:
            raise MisconfigurationError(
                f"`val_check_interval` ({interval}) must be less than or equal to the number of the training batches "
                f"({n}); use at most {n}, a float fraction, or check_val_every_n_epoch=None to count batches across "
                "epochs"
            )
        return interval

    def _val_due_this_epoch(self) -> bool:
        every = self.trainer.check_val_every_n_epoch
        return every is None or (self.trainer.current_epoch + 1) % every == 0

    def _val_due(self, batch_idx: int, is_last: bool) -> bool:
        """Lightning's schedule: after every ``val_check_batch``-th batch (1.0 means the epoch's last batch) of the
        epochs ``check_val_every_n_epoch`` selects (with ``None``: batches counted across epochs); with a time
        ``val_check_interval``, once that much time passed since the last validation; and before stopping early."""
        trainer, every, seconds = self.trainer, self.val_check_batch, self.trainer._val_check_seconds
        if not self.val_enabled or not self._val_due_this_epoch():
            return False
        if is_last and ((every == math.inf and seconds is None) or self.train_takes_iterator):
            return True
        if trainer.should_stop and self._min_reached():
            return True
        if seconds is not None:
            return time.monotonic() - self.last_val_time >= seconds
        if every == math.inf:
            return False
        done = trainer.progress.total_batches if trainer.check_val_every_n_epoch is None else batch_idx + 1
        return done % every == 0

    # ---------------------------------------------------------------------------------------------------- validating
    def _sanity_check(self) -> None:
        trainer, steps = self.trainer, self.trainer.num_sanity_val_steps
        stage, trainer.sanity_checking = trainer.state.stage, True
        try:
            self.call("on_sanity_check_start")
            self._load_val_data()
            counts = [n for _, _, n in self.val_plan]
            trainer.num_sanity_val_batches = [min(steps, n) for n in counts]
            self.evaluate("validate", [(i, loader, min(steps, n)) for i, loader, n in self.val_plan])
            self.call("on_sanity_check_end")
        finally:
            trainer.state.stage = stage
        trainer.callback_metrics.clear()
        trainer.logged_metrics.clear()
        trainer._progress_bar_metrics.clear()

    def validate_during_fit(self) -> None:
        trainer = self.trainer
        trainer.progress.validated_at = trainer.progress.total_batches  # before the hooks: a checkpoint records it
        if self._should_reload_val():
            self._load_val_data()
        if not any(n for _, _, n in self.val_plan):
            return
        train_results = trainer._results
        trainer.validating = True
        self.call_module("on_validation_model_zero_grad")
        if self.heartbeat is not None:
            self.heartbeat.begin("validating")
        self.evaluate("validate", self.val_plan)
        if self.heartbeat is not None:
            self.heartbeat.enter("training")
        trainer.training = True
        self.last_val_time = time.monotonic()
        trainer._results = train_results
        train_results.dataloader_idx = None
