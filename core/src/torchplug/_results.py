"""What ``self.log`` records: values stay on their device and are read to the host at the logging interval only.

Names follow Lightning's rules. A value logged both per step and per epoch is *forked*: ``name_step`` and
``name_epoch`` (``callback_metrics`` also has ``name``: the latest step value during the epoch, the epoch value
after it). With several evaluation dataloaders every key gets ``/dataloader_idx_N`` after that. Evaluation
step values reach the loggers, ``logged_metrics`` and the progress bar, never ``callback_metrics``.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import MisconfigurationError

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min", sum: "sum",
                     max: "max", min: "min"}  # fmt: skip

# Where ``self.log`` may be called: (default on_step, default on_epoch, allowed on_step, allowed on_epoch).
_PER_STEP = (True, False, (False, True), (False, True))
_PER_EVAL_STEP = (False, True, (False, True), (False, True))
_PER_EPOCH = (False, True, (False,), (True,))
LOGGING_HOOKS: dict[str, tuple[bool, bool, tuple[bool, ...], tuple[bool, ...]]] = {
    **dict.fromkeys((
        "training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward", "backward",
        "on_after_backward", "on_before_optimizer_step", "optimizer_step", "configure_gradient_clipping",
        "clip_gradients", "on_before_zero_grad", "optimizer_zero_grad",
    ), _PER_STEP),
    **dict.fromkeys((
        "validation_step", "test_step", "on_validation_batch_start", "on_validation_batch_end",
        "on_test_batch_start", "on_test_batch_end",
    ), _PER_EVAL_STEP),
    **dict.fromkeys((
        "on_train_start", "on_validation_start", "on_test_start", "on_train_epoch_start", "on_train_epoch_end",
        "on_validation_epoch_start", "on_validation_epoch_end", "on_test_epoch_start", "on_test_epoch_end",
    ), _PER_EPOCH),
}  # fmt: skip


#: ``logging_levels``' answers already checked, by ``(hook, on_step, on_epoch)`` (Module.log reads it first).
LEVELS_CHECKED: dict[tuple[str | None, bool | None, bool | None], tuple[bool, bool]] = {}


def logging_levels(hook: str | None, name: str, on_step: bool | None, on_epoch: bool | None) -> tuple[bool, bool]:
    """``on_step``/``on_epoch`` for a ``self.log`` in ``hook`` (its defaults where not given), or a clear error."""
    known = LEVELS_CHECKED.get((hook, on_step, on_epoch))
    if known is not None:
        return known
    given = (hook, on_step, on_epoch)
    rule = LOGGING_HOOKS.get(hook) if hook is not None else None
    if rule is None:
        where = f"inside `{hook}`" if hook else "outside the steps and hooks that the Trainer runs"
        raise MisconfigurationError(
            f"You can't `self.log({name!r}, ...)` {where}: log in the training, validation or test steps, in their "
            "batch and epoch hooks, or in on_train/validation/test_start. To write to a logger directly, use "
            "self.logger.experiment"
        )
    default_step, default_epoch, allowed_step, allowed_epoch = rule
    on_step = default_step if on_step is None else on_step
    on_epoch = default_epoch if on_epoch is None else on_epoch
    for flag, value, allowed in (("on_step", on_step, allowed_step), ("on_epoch", on_epoch, allowed_epoch)):
        if value not in allowed:
            raise MisconfigurationError(
                f"You can't `self.log({name!r}, {flag}={value})` inside `{hook}`, must be one of {allowed}: it runs "
                "once per epoch"
            )
    if not (on_step or on_epoch):
        raise MisconfigurationError(
            f"`self.log({name!r}, on_step=False, on_epoch=False)` is not useful: it logs nothing; set one of them"
        )
    LEVELS_CHECKED[given] = (on_step, on_epoch)
    return on_step, on_epoch


def check_value(name: str, value: Any) -> None:
    """Lightning's rule for what ``self.log`` takes: a number, a tensor or a ``torchmetrics.Metric``."""
    kind = type(value)
    if kind is torch.Tensor or kind is float or kind is int:
        return
    if isinstance(value, dict):
        problem = "nested dictionaries" if any(isinstance(v, dict) for v in value.values()) else "`dict` values"
    elif isinstance(value, (str, bytes, list, tuple, set, complex)) or not (
        isinstance(value, (numbers.Number, torch.Tensor)) or is_metric(value)
    ):
        problem = f"`{type(value).__name__}` values"
    else:
        return
    raise ValueError(
        f"`self.log({name}, {value})` was called, but {problem} cannot be logged: log a number, a one-element tensor "
        "or a torchmetrics Metric (self.log_dict logs several values)"
    )


def is_metric(value: Any) -> bool:
    """A ``torchmetrics.Metric`` (checked without importing torchmetrics when nobody has)."""
    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(value, module.Metric)


def is_metric_collection(value: Any) -> bool:
    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(value, module.MetricCollection)


def _reduce_op(name: str, reduce_fx: Any) -> str:
    op = _REDUCE_NAMES.get(reduce_fx.lower()) if isinstance(reduce_fx, str) else _REDUCE_FUNCTIONS.get(reduce_fx)
    if op is None:
        raise MisconfigurationError(
            f"self.log({name!r}, reduce_fx={reduce_fx!r}): only `self.log(..., reduce_fx={{min,max,mean,sum}})` are "
            "supported (as strings, torch.min/max/mean/sum or the built-in min/max/sum); for another reduction "
            "log a torchmetrics Metric"
        )
    return op


def batch_size_of(batch: Any) -> int:
    """The length of the first tensor found in ``batch`` (1 for a scalar), as Lightning infers it for epoch means."""
    found = None
    for size in _sizes(batch):
        if size is None:
            continue
        if found is None:
            found = size
        elif size != found:
            warnings.warn(
                f"Trying to infer the `batch_size` from an ambiguous collection. The batch size we found is {found}. "
                "To avoid any miscalculations, use `self.log(..., batch_size=batch_size)`.",
                UserWarning,
                stacklevel=4,
            )
            break
    if found is None:
        raise MisconfigurationError(
            "We could not infer the batch_size from the batch. Either simplify its structure or provide the "
            "batch_size as `self.log(..., batch_size=batch_size)`."
        )
    return found


def _sizes(batch: Any) -> Iterable[int | None]:
    if isinstance(batch, torch.Tensor):
        yield 1 if batch.ndim == 0 else batch.size(0)
    elif isinstance(batch, Mapping):
        for item in batch.values():
            yield from _sizes(item)
    elif isinstance(batch, Iterable) and not isinstance(batch, str):
        for item in batch:
            yield from _sizes(item)
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        for field in dataclasses.fields(batch):
            yield from _sizes(getattr(batch, field.name))
    else:
        yield None


class _Metric:
    __slots__ = ("name", "step_key", "epoch_key", "dataloader_idx", "prog_bar", "logger", "on_step", "on_epoch",
                 "op", "sync_dist", "values", "weights", "metric", "updated", "hook", "arguments")  # fmt: skip

    def __init__(self, name: str, suffix: str, dataloader_idx: int | None, prog_bar: bool, logger: bool,
                 on_step: bool, on_epoch: bool, op: str, sync: bool) -> None:  # fmt: skip
        forked = on_step and on_epoch
        self.name = name + suffix
        self.step_key = f"{name}_step{suffix}" if forked else self.name
        self.epoch_key = f"{name}_epoch{suffix}" if forked else self.name
        self.dataloader_idx = dataloader_idx
        self.prog_bar, self.logger = prog_bar, logger
        self.on_step, self.on_epoch, self.op, self.sync_dist = on_step, on_epoch, op, sync
        self.values: list[torch.Tensor] = []
        self.weights: list[int] = []
        self.metric: Any = None  # a torchmetrics.Metric: it accumulates and reduces itself
        self.updated = False
        self.hook: str | None = None  # where it was first logged, and how: logging it there again differently is an error
        self.arguments: tuple[Any, ...] = ()

    def aggregate(self) -> torch.Tensor:
        device = self.values[0].device
        values = torch.stack([v.to(device) for v in self.values])
        if self.op == "mean":
            if any(w != 1 for w in self.weights):
                weights = torch.tensor(self.weights, dtype=values.dtype, device=values.device)
                return (values * weights).sum() / weights.sum()
            return values.mean()
        return getattr(values, self.op)()

    def compute(self) -> torch.Tensor:
        value = self.metric.compute()
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"The `.compute()` return of the metric logged as {self.name!r} must be a tensor, got "
                             f"{type(value).__name__}")  # fmt: skip
        return value


class Results:
    """The metrics logged during one loop (training, or one evaluation run).

    ``step_metrics`` hold the latest per-step values for the loggers until the loop sends them; epoch values are
    collected per batch and aggregated (and reduced across processes when ``sync_dist``) at epoch end.
    """

    def __init__(self, trainer: Trainer, training: bool) -> None:
        self.trainer = trainer
        self.training = training
        self.dataloader_idx: int | None = None
        self.metrics: dict[str, _Metric] = {}
        self.step_metrics: dict[str, torch.Tensor] = {}
        self.batch: Any = None
        self._batch_size: int | None = None

    def new_batch(self, batch: Any) -> None:
        self.batch, self._batch_size = batch, None

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: bool | None,
        on_step: bool,
        on_epoch: bool,
        reduce_fx: Any,
        sync_dist: bool,
        batch_size: int | None,
        add_dataloader_idx: bool,
    ) -> None:
        """Record ``value`` (``on_step``/``on_epoch`` already resolved from the hook, see :func:`logging_levels`)."""
        dataloader_idx = self.dataloader_idx
        suffix = f"/dataloader_idx_{dataloader_idx}" if dataloader_idx is not None and add_dataloader_idx else ""
        metric = self.metrics.get(name + suffix if suffix else name)
        arguments = (prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist)
        if metric is None:
            metric = self.metrics[name + suffix] = _Metric(
                name, suffix, dataloader_idx, prog_bar, logger is not False, on_step, on_epoch,
                _reduce_op(name, reduce_fx), sync_dist,
            )  # fmt: skip
            loop = self.trainer._loop
            metric.hook, metric.arguments = (loop.current_hook if loop is not None else None), arguments
        elif arguments != metric.arguments:
            loop = self.trainer._loop
            hook = loop.current_hook if loop is not None else None
            if hook == metric.hook:
                raise MisconfigurationError(
                    f"You called `self.log({name}, ...)` twice in `{hook}` with different arguments. This is not "
                    "allowed: log it once per call of the hook, or under another name"
                )
        trainer = self.trainer
        if type(value) is not torch.Tensor and is_metric(value):
            metric.metric, metric.updated = value, True
            value = value._forward_cache  # this batch's value, when the metric was called (forward) this step
            if not metric.on_step or not isinstance(value, torch.Tensor):
                return
        else:
            if type(value) is torch.Tensor and value.ndim == 0 and value.is_floating_point():  # the common case
                if value.requires_grad:
                    value = value.detach()
            else:
                value = self._as_tensor(name, value, sync_dist)
            if metric.on_epoch:  # this process's own value: the epoch aggregate is reduced across processes once
                metric.values.append(value)
                if batch_size is None and metric.op == "mean":
                    batch_size = self._batch_size_of_batch()
                metric.weights.append(1 if batch_size is None else int(batch_size))
            if not metric.on_step:
                return
            if metric.sync_dist:
                value = trainer.hook.torchplug_all_reduce(trainer=trainer, tensor=value, op=metric.op)
        key = metric.step_key
        if metric.logger:
            self.step_metrics[key] = value
            trainer.logged_metrics[key] = value
        if metric.prog_bar:
            trainer._progress_bar_metrics[key] = value
        if self.training:
            callback_metrics = trainer.callback_metrics
            callback_metrics[key] = value
            if metric.on_epoch:
                callback_metrics[metric.name] = value

    def _as_tensor(self, name: str, value: Any, sync_dist: bool) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            # A Python number stays on the host (no copy per step) unless a collective needs it on the device.
            return torch.tensor(float(value), device=self.trainer.root_device if sync_dist else "cpu")
        if value.ndim and value.numel() != 1:
            raise ValueError(
                f"`self.log({name}, <tensor of shape {tuple(value.shape)}>)` was called, but the tensor must have a "
                f"single element. You can try doing `self.log({name!r}, value.mean())`"
            )
        if value.requires_grad:
            value = value.detach()
        if value.ndim:
            value = value.reshape(())
        if not value.is_floating_point():
            value = value.float()
        return value

    def _batch_size_of_batch(self) -> int | None:
        if self._batch_size is None and self.batch is not None:
            self._batch_size = batch_size_of(self.batch)
        return self._batch_size

    def epoch_end(self, dataloader_idx: int | None = None) -> dict[str, torch.Tensor]:
        """Aggregate epoch values (every rank must call it: ``sync_dist`` reduces here) and clear them; only those
        of one evaluation dataloader when ``dataloader_idx`` is given (at the end of that loader, as Lightning).

        Returns what goes to the loggers; ``callback_metrics``, ``logged_metrics`` and the progress bar are updated.
        A torchmetrics Metric keeps its state until :meth:`reset_metric_states` (the end of the epoch).
        """
        logged: dict[str, torch.Tensor] = {}
        trainer = self.trainer
        for metric in self.metrics.values():
            if not metric.on_epoch or (dataloader_idx is not None and metric.dataloader_idx != dataloader_idx):
                continue
            if metric.metric is not None:
                if not metric.updated:
                    continue
                value = metric.compute()
                metric.updated = False
            elif metric.values:
                value = metric.aggregate()
                if metric.sync_dist:
                    value = trainer.hook.torchplug_all_reduce(trainer=trainer, tensor=value, op=metric.op)
                metric.values.clear()
                metric.weights.clear()
            else:
                continue
            key = metric.epoch_key
            trainer.callback_metrics[metric.name] = value
            trainer.callback_metrics[key] = value
            if metric.prog_bar:
                trainer._progress_bar_metrics[key] = value
            if metric.logger:
                logged[key] = value
                trainer.logged_metrics[key] = value
        return logged

    def reset_metric_states(self) -> None:
        """Reset the torchmetrics Metrics logged this epoch (Lightning resets them after every epoch)."""
        for metric in self.metrics.values():
            if metric.metric is not None:
                metric.metric.reset()
                metric.updated = False

    def per_dataloader(self, logged: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
        """``validate``/``test``'s answer: for each dataloader its logged epoch values and those of no loader."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
        for metric in self.metrics.values():
            if metric.epoch_key not in logged:
                continue
            for i, values in enumerate(out):
                if metric.dataloader_idx is None or metric.dataloader_idx == i or count == 1:
                    values[metric.epoch_key] = logged[metric.epoch_key]
        return out

    def pop_step_metrics(self) -> dict[str, torch.Tensor]:
        metrics, self.step_metrics = self.step_metrics, {}
        return metrics
