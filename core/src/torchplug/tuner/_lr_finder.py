"""The learning rate range test: train a few steps while the learning rate grows from ``min_lr`` to ``max_lr``,
record the loss at each, and suggest the rate where the loss falls fastest."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from torchplug import _trial
from torchplug._errors import MisconfigurationError
from torchplug._optim import LRSchedulerConfig
from torchplug.callbacks._base import Callback
from torchplug.tuner import _attributes
from torchplug.utilities import rank_zero_warn

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

MODES = ("exponential", "linear")
_LR_NAMES = ("lr", "learning_rate")


class LRFinder:
    """What a learning rate search found: ``results`` (``{"lr": [...], "loss": [...]}``, the loss smoothed),
    :meth:`suggestion` and :meth:`plot`."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        check_mode(mode)
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, lr_min, lr_max, num_training
        self.results: dict[str, list[float]] = {}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the recorded loss falls fastest (its steepest negative gradient against the
        learning rate), leaving out the first ``skip_begin`` and the last ``skip_end`` points and the points whose
        loss is not finite. None, with an error logged, when fewer than two points are left."""
        losses_all, lrs_all = self.results.get("loss", []), self.results.get("lr", [])
        end = len(losses_all) - skip_end
        losses = torch.tensor([float(x) for x in losses_all[skip_begin:end]], dtype=torch.float64)
        lrs = torch.tensor([float(x) for x in lrs_all[skip_begin:end]], dtype=torch.float64)
        finite = torch.isfinite(losses)
        if int(finite.sum()) < 2:
            log.error(
                "Failed to compute suggestion for learning rate because there are not enough points (%d finite of %d "
                "after skipping %d at the beginning and %d at the end). Increase the loop iteration limits "
                "(num_training) or lower skip_begin/skip_end.",
                int(finite.sum()), len(losses_all), skip_begin, skip_end,
            )  # fmt: skip
            self._optimal_idx = None
            return None
        steepest = int(torch.gradient(losses[finite], spacing=[lrs[finite]])[0].argmin())
        self._optimal_idx = int(torch.arange(len(losses))[finite][steepest]) + skip_begin
        return float(lrs_all[self._optimal_idx])

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """The loss against the learning rate (log scale for ``mode="exponential"``) as a matplotlib figure, with the
        suggestion marked when ``suggest``; ``ax`` draws into an existing axes. Needs matplotlib (extra ``plot``)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ModuleNotFoundError(
                "LRFinder.plot needs matplotlib, which is not installed: pip install 'torchplug[plot]'"
            ) from err
        lrs, losses = self.results["lr"], self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            if self.suggestion() is not None and self._optimal_idx is not None:
                ax.plot(
                    lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red"
                )
        if show:
            plt.show()
        return fig


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` should be either of {MODES}; got mode={mode!r}")


def check_arguments(
    mode: str, min_lr: float, max_lr: float, num_training: int, early_stop_threshold: float | None = None
) -> None:
    check_mode(mode)
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"lr_find({name}={value!r}): a learning rate must be a finite number above 0")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 1:
        raise ValueError(
            f"lr_find(num_training={num_training!r}): the search needs an int of at least 1 step"
        )
    threshold = early_stop_threshold
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < math.inf
    ):
        raise ValueError(
            f"lr_find(early_stop_threshold={threshold!r}): expected None (never stop early) or a finite number above "
            "0, the multiple of the best loss at which the search stops (4.0 by default)"
        )


def lr_attribute(model: Module, attr_name: str = "") -> str:
    """The name under which ``model`` (or its hparams, or the datamodule) keeps its learning rate."""
    if attr_name:
        if _attributes.has(model, attr_name):
            return attr_name
        raise AttributeError(
            f"The attribute name for the learning rate was set to {attr_name!r}, but it is neither a field of the "
            "`model`, of `model.hparams` nor of the datamodule"
        )
    for name in _LR_NAMES:
        if _attributes.has(model, name):
            return name
    raise AttributeError(
        f"When using the learning rate finder, either `model` or `model.hparams` should have one of these fields: "
        f"{list(_LR_NAMES)}. If your model keeps its learning rate under another name, pass it as "
        "lr_find(attr_name=...)"
    )


def lr_find(
    trainer: Trainer,
    model: Module,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
    update_attr: bool = False,
    attr_name: str = "",
) -> LRFinder | None:
    """Run the search inside the running ``fit`` (from a callback's hook, as :class:`LearningRateFinder` does),
    then put the model, its optimizer and the trainer back as they were; with ``update_attr``, set the suggested
    learning rate on the model's attribute and on the optimizer. None when ``fast_dev_run`` skips the search."""
    check_arguments(mode, min_lr, max_lr, num_training, early_stop_threshold)
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping learning rate finder since `fast_dev_run` is enabled.")
        return None
    if update_attr:
        attr_name = lr_attribute(model, attr_name)
    loop = _trial.running_loop(trainer, "lr_find")
    if loop.stage != "fit":
        raise MisconfigurationError(
            f"the learning rate finder trains, so it runs in fit, not in {loop.stage}"
        )
    if len(trainer.optimizers) != 1:
        raise MisconfigurationError(
            f"`model.configure_optimizers()` returned {len(trainer.optimizers)} optimizers, but the learning rate "
            "finder only works with single optimizer"
        )
    optimizer = trainer.optimizers[0]
    finder = LRFinder(mode, min_lr, max_lr, num_training)
    path = _trial.save_temporary(trainer, ".lr_find")
    try:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = min_lr
        scheduler = LambdaLR(optimizer, _ramp(mode, min_lr, max_lr, num_training))
        recorder = _LossRecorder(scheduler, early_stop_threshold)
        start = trainer.global_step
        ramp = [LRSchedulerConfig(scheduler=scheduler, interval="step")]
        with _trial.settings(trainer, [recorder], {"limit_val_batches": num_training}, ramp) as running:
            _trial.run(running, num_training)
            if recorder.diverged:
                log.info(
                    "LR finder stopped early after %d steps due to diverging loss.",
                    trainer.global_step - start,
                )
            elif trainer.global_step != start + num_training:
                log.info(
                    "LR finder stopped after %d of %d steps: the run's max_epochs ended it (raise max_epochs to "
                    "test more rates)", trainer.global_step - start, num_training,
                )  # fmt: skip
        finder.results = trainer.broadcast({"lr": recorder.lrs, "loss": recorder.losses})
    finally:
        _trial.rollback(trainer, path)
    if update_attr:
        lr = finder.suggestion()
        if lr is not None:
            _attributes.set_everywhere(model, attr_name, lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            log.info("Learning rate set to %s", lr)
    return finder


def _ramp(mode: str, min_lr: float, max_lr: float, num_training: int) -> Any:
    """The factor on ``min_lr`` at each step: ``min_lr`` at the first, ``max_lr`` at the last."""
    last = max(num_training - 1, 1)
    ratio = max_lr / min_lr
    if mode == "exponential":
        return lambda step: ratio ** (min(step, last) / last)
    return lambda step: 1 + (ratio - 1) * min(step, last) / last


class _LossRecorder(Callback):
    """Records, for each optimizer step of the search, the learning rate and the smoothed loss; stops the search
    once the loss exceeds ``early_stop_threshold`` times the best seen."""

    def __init__(self, scheduler: Any, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.scheduler, self.early_stop_threshold, self.beta = scheduler, early_stop_threshold, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.average, self.best = 0.0, math.inf
        self.diverged = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:  # the last batch of the window steps
            self.lrs.append(float(self.scheduler.get_last_lr()[0]))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        loss = outputs if isinstance(outputs, torch.Tensor) else (outputs or {}).get("loss")
        if loss is None:  # training_step returned None: no loss for this learning rate
            self.losses.append(float("nan"))
            return
        self.average = self.beta * self.average + (1 - self.beta) * float(loss)
        smoothed = self.average / (1 - self.beta ** (len(self.losses) + 1))
        threshold = self.early_stop_threshold
        if threshold is not None and self.losses and smoothed > threshold * self.best:
            trainer.should_stop = self.diverged = True
        trainer.should_stop = trainer.broadcast(trainer.should_stop)
        self.best = min(self.best, smoothed)
        self.losses.append(smoothed)
