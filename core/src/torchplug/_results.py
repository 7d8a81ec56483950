"""What ``self.log`` records: values stay on their device and are read to the host at the logging interval only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import MisconfigurationError

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}


def _reduce_op(name: str, reduce_fx: Any) -> str:
    op = _REDUCE_NAMES.get(reduce_fx) if isinstance(reduce_fx, str) else _REDUCE_FUNCTIONS.get(reduce_fx)
    if op is None:
        raise MisconfigurationError(
            f"self.log({name!r}, reduce_fx={reduce_fx!r}): use 'mean', 'sum', 'max' or 'min' (or torch.mean/sum/max/min)"
        )
    return op


class _Metric:
    __slots__ = ("name", "prog_bar", "logger", "on_step", "on_epoch", "op", "sync_dist", "values", "weights")

    def __init__(self, name: str, prog_bar: bool, logger: bool, on_step: bool, on_epoch: bool, op: str, sync: bool):
        self.name, self.prog_bar, self.logger = name, prog_bar, logger
        self.on_step, self.on_epoch, self.op, self.sync_dist = on_step, on_epoch, op, sync
        self.values: list[torch.Tensor] = []
        self.weights: list[int] = []

    def aggregate(self) -> torch.Tensor:
        device = self.values[0].device
        values = torch.stack([v.float().to(device) for v in self.values])
        if self.op == "mean":
            if any(w != 1 for w in self.weights):
                weights = torch.tensor(self.weights, dtype=values.dtype, device=values.device)
                return (values * weights).sum() / weights.sum()
            return values.mean()
        return getattr(values, self.op)()


class Results:
    """The metrics logged during one loop (training, or one evaluation run).

    ``step_metrics`` hold the latest per-step values until the trainer flushes them to the loggers; epoch values
    are collected per batch and aggregated (and reduced across processes when ``sync_dist``) at epoch end.
    """

    def __init__(self, trainer: Trainer, default_on_step: bool) -> None:
        self.trainer = trainer
        self.default_on_step = default_on_step
        self.dataloader_idx: int | None = None
        self.metrics: dict[str, _Metric] = {}
        self.step_metrics: dict[str, torch.Tensor] = {}

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        reduce_fx: Any,
        sync_dist: bool,
        batch_size: int | None,
        add_dataloader_idx: bool,
    ) -> None:
        if self.dataloader_idx is not None and add_dataloader_idx:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        metric = self.metrics.get(name)
        if metric is None:
            step = self.default_on_step if on_step is None else on_step
            epoch = (not self.default_on_step) if on_epoch is None else on_epoch
            if not (step or epoch):
                raise MisconfigurationError(f"self.log({name!r}, on_step=False, on_epoch=False) logs nothing")
            metric = self.metrics[name] = _Metric(
                name, prog_bar, logger, step, epoch, _reduce_op(name, reduce_fx), sync_dist
            )
        if not isinstance(value, torch.Tensor):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MisconfigurationError(
                    f"self.log({name!r}, value={value!r}): log a number or a one-element tensor "
                    "(use self.log_dict for several values)"
                )
            # A Python number stays on the host (no copy per step) unless a collective needs it on the device.
            value = torch.tensor(float(value), device=self.trainer.root_device if sync_dist else "cpu")
        elif value.numel() != 1:
            raise MisconfigurationError(
                f"self.log({name!r}, ...) got a tensor of shape {tuple(value.shape)}; log a one-element tensor"
            )
        elif value.requires_grad:
            value = value.detach()
        trainer = self.trainer
        if metric.on_epoch:  # this process's own value: the epoch aggregate is reduced across processes once
            metric.values.append(value)
            metric.weights.append(1 if batch_size is None else int(batch_size))
        if metric.on_step:
            if metric.sync_dist:
                value = trainer.hook.torchplug_all_reduce(trainer=trainer, tensor=value, op=metric.op)
            key = f"{name}_step" if metric.on_epoch else name
            if metric.logger:
                self.step_metrics[key] = value
            if metric.prog_bar:
                trainer._progress_bar_metrics[key] = value
            trainer.callback_metrics[key] = value
            if metric.on_epoch:
                trainer.callback_metrics[name] = value

    def epoch_end(self) -> dict[str, torch.Tensor]:
        """Aggregate epoch values (every rank must call it: ``sync_dist`` reduces here) and clear them."""
        logged: dict[str, torch.Tensor] = {}
        trainer = self.trainer
        for metric in self.metrics.values():
            if not metric.on_epoch or not metric.values:
                continue
            value = metric.aggregate()
            if metric.sync_dist:
                value = trainer.hook.torchplug_all_reduce(trainer=trainer, tensor=value, op=metric.op)
            key = f"{metric.name}_epoch" if metric.on_step else metric.name
            trainer.callback_metrics[metric.name] = value
            trainer.callback_metrics[key] = value
            if metric.prog_bar:
                trainer._progress_bar_metrics[key] = value
            if metric.logger:
                logged[key] = value
            metric.values.clear()
            metric.weights.clear()
        return logged

    def pop_step_metrics(self) -> dict[str, torch.Tensor]:
        metrics, self.step_metrics = self.step_metrics, {}
        return metrics
