"""``StochasticWeightAveraging``: average the weights of the last epochs (SWA, arXiv:1803.05407) under ``SWALR``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR

from torchplug._errors import MisconfigurationError
from torchplug._optim import LRSchedulerConfig
from torchplug.callbacks._base import Callback
from torchplug.utilities import rank_zero_warn

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

log = logging.getLogger(__name__)

AverageFunction = Callable[[Tensor, Tensor, Tensor], Tensor]
_CPU = torch.device("cpu")


class StochasticWeightAveraging(Callback):
    """Average the model's parameters over the epochs from ``swa_epoch_start`` on, then train with the average
    (Lightning's name).

    ``swa_epoch_start`` is an epoch (int >= 1, 1-based) or a fraction of ``max_epochs`` (float in [0, 1]). From that
    epoch the optimizer's learning rate is annealed to ``swa_lrs`` (one float, or one per param group) over
    ``annealing_epochs`` by ``torch.optim.swa_utils.SWALR`` (``annealing_strategy`` "cos" or "linear"), which replaces
    the configured scheduler. At the start of each of those epochs the current parameters join the running average
    (``avg_fn(averaged, current, n_averaged)``, the mean by default), kept on ``device`` (None: the model's). When
    training reaches ``max_epochs``, the average becomes the model's parameters, and the running statistics of its
    BatchNorm layers are recomputed with one pass over the training data, as many batches as an epoch trains on
    (``torch.optim.swa_utils.update_bn``'s way: :meth:`batch_norm_forward` calls the module on each batch, or its first
    element, after the transfer hooks). Needs one optimizer and at most one LR scheduler.
    """

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: AverageFunction | None = None,
        device: torch.device | str | None = _CPU,
    ) -> None:
        start_ok = (
            isinstance(swa_epoch_start, int)
            and not isinstance(swa_epoch_start, bool)
            and swa_epoch_start >= 1
        ) or (isinstance(swa_epoch_start, float) and 0 <= swa_epoch_start <= 1)
        if not start_ok:
            raise MisconfigurationError(
                f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}): swa_epoch_start should be a >0 "
                "integer or a float between 0 and 1 (a fraction of max_epochs)"
            )
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if (
            not isinstance(swa_lrs, (float, list))
            or not lrs
            or not all(isinstance(lr, float) and lr > 0 for lr in lrs)
        ):
            raise MisconfigurationError(
                f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}): `swa_lrs` should be a positive float, or a list of "
                "positive floats (one per param group)"
            )
        if annealing_strategy not in ("cos", "linear"):
            raise MisconfigurationError(
                f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}): use 'cos' or 'linear'"
            )
        if (
            isinstance(annealing_epochs, bool)
            or not isinstance(annealing_epochs, int)
            or annealing_epochs < 0
        ):
            raise MisconfigurationError(
                f"StochasticWeightAveraging(annealing_epochs={annealing_epochs!r}): use an int >= 0"
            )
        if avg_fn is not None and not callable(avg_fn):
            raise MisconfigurationError(
                f"StochasticWeightAveraging(avg_fn={avg_fn!r}): `avg_fn` should be callable"
            )
        if device is not None and not isinstance(device, (torch.device, str)):
            raise MisconfigurationError(
                f"StochasticWeightAveraging(device={device!r}): device is expected to be a torch.device or a str"
            )
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or self.avg_fn
        self._device = device
        self._max_epochs = -1
        self._average: list[Tensor] | None = None  # the averaged parameters, in pl_module.parameters() order
        self.n_averaged: Tensor | None = None
        self._latest_update_epoch = -1
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = (
            None  # from a checkpoint, for the scheduler made at resume
        )

    @property
    def swa_start(self) -> int:
        """The first (0-based) epoch that is averaged."""
        return max(int(self._swa_epoch_start) - 1, 0)

    @property
    def swa_end(self) -> float:
        """The last (0-based) epoch that is averaged (infinite with ``max_epochs=-1``)."""
        return float("inf") if self._max_epochs == -1 else self._max_epochs - 1

    @staticmethod
    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        """The running mean: ``averaged`` moved towards ``current`` by ``1 / (num_averaged + 1)``."""
        return averaged + (current - averaged) / (num_averaged + 1)

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules())

    # ------------------------------------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationError(
                f"StochasticWeightAveraging works with 1 optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}"
            )
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationError(
                "StochasticWeightAveraging replaces the LR scheduler, so it works with at most 1; "
                f"configure_optimizers returned {len(trainer.lr_scheduler_configs)}"
            )
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        if isinstance(self._swa_epoch_start, float):
            if max_epochs == -1:
                raise MisconfigurationError(
                    f"StochasticWeightAveraging(swa_epoch_start={self._swa_epoch_start}): a fraction needs "
                    "max_epochs; with max_epochs=-1 give the epoch as an int"
                )
            self._swa_epoch_start = int(max_epochs * self._swa_epoch_start)
        self._max_epochs = max_epochs
        if self._average is None:
            self._average = [p.detach().clone().to(self._device or p.device) for p in pl_module.parameters()]

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        epoch = trainer.current_epoch
        if not self.swa_start <= epoch <= self.swa_end:
            return
        if self._swa_scheduler is None:
            self._start_annealing(trainer, epoch)
        if epoch > self._latest_update_epoch:
            self.update_parameters(pl_module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Trainer, pl_module: Module) -> None:
        finished = self._max_epochs == -1 or trainer.current_epoch - 1 == self.swa_end
        if (
            finished
            and self._average is not None
            and self.n_averaged is not None
            and int(self.n_averaged) > 0
        ):
            self.transfer_weights(pl_module)
            if self.pl_module_contains_batch_norm(pl_module):
                self._update_batch_norm(trainer, pl_module)

    # ------------------------------------------------------------------------------------------------ the work
    def _start_annealing(self, trainer: Trainer, epoch: int) -> None:
        optimizer = trainer.optimizers[0]
        groups = optimizer.param_groups
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(groups)
        if len(lrs) != len(groups):
            raise MisconfigurationError(
                f"StochasticWeightAveraging(swa_lrs={self._swa_lrs}): {len(lrs)} learning rates for the optimizer's "
                f"{len(groups)} param groups; give one per group, or one float"
            )
        for lr, group in zip(lrs, groups):
            group["initial_lr"] = lr
        self._swa_scheduler = SWALR(
            optimizer, swa_lr=lrs, anneal_epochs=self._annealing_epochs, anneal_strategy=self._annealing_strategy,
            last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1,
        )  # fmt: skip
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif epoch != self.swa_start:
            rank_zero_warn(
                f"StochasticWeightAveraging starts at epoch {epoch}, after its start epoch {self.swa_start}, without "
                "its state from a checkpoint: the average starts afresh here"
            )
        config = LRSchedulerConfig(self._swa_scheduler)
        if trainer.lr_scheduler_configs:
            previous = trainer.lr_scheduler_configs[0]
            if previous.interval != "epoch" or previous.frequency != 1:
                rank_zero_warn(
                    f"SWA is currently only supported every epoch: the configured scheduler steps every "
                    f"{previous.frequency} {previous.interval}(s); SWALR steps once per epoch instead"
                )
            if trainer.is_global_zero:
                log.info(
                    f"Swapping scheduler `{type(previous.scheduler).__name__}` for `{type(self._swa_scheduler).__name__}`"
                )
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(0, dtype=torch.long)

    @torch.no_grad()
    def update_parameters(self, pl_module: nn.Module) -> None:
        """Add ``pl_module``'s current parameters to the average."""
        assert self._average is not None and self.n_averaged is not None
        for averaged, current in zip(self._average, pl_module.parameters()):
            current = current.detach().to(averaged.device)
            n = self.n_averaged.to(averaged.device)
            averaged.copy_(current if int(self.n_averaged) == 0 else self._avg_fn(averaged, current, n))
        self.n_averaged += 1

    @torch.no_grad()
    def transfer_weights(self, pl_module: nn.Module) -> None:
        """Copy the averaged parameters into ``pl_module``."""
        assert self._average is not None
        for averaged, parameter in zip(self._average, pl_module.parameters()):
            parameter.copy_(averaged.to(parameter.device))

    def batch_norm_forward(self, pl_module: Module, batch: Any) -> None:
        """Run ``pl_module`` on one training batch (already moved by the transfer hooks) to recompute the BatchNorm
        statistics: on the batch when it is a tensor, on its first element when it is a list or tuple (PyTorch's
        ``update_bn``). Override it for other batches (a dict, say: ``pl_module(batch["x"])``)."""
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        if not isinstance(batch, Tensor):
            raise MisconfigurationError(
                f"StochasticWeightAveraging recomputes the BatchNorm statistics by calling the module on each training "
                f"batch (or its first element), but a batch is {type(batch).__name__}: override "
                "StochasticWeightAveraging.batch_norm_forward(pl_module, batch) to call the module on it"
            )
        pl_module(batch)

    @torch.no_grad()
    def _update_batch_norm(self, trainer: Trainer, pl_module: Module) -> None:
        loader = trainer.train_dataloader
        if loader is None:
            rank_zero_warn(
                "StochasticWeightAveraging: no training dataloader to recompute BatchNorm statistics with"
            )
            return
        norms = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = {m: (m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms}
        was_training = pl_module.training
        limit = trainer.num_training_batches  # limit_train_batches holds here as in the epochs trained
        prepare = trainer._loop.prepare
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative mean over the pass
        pl_module.train()
        finished = False
        try:
            for batch_idx, batch in enumerate(loader):
                if batch_idx >= limit:
                    break
                self.batch_norm_forward(pl_module, prepare(batch, 0))
            finished = True
        finally:
            for norm, (momentum, state) in saved.items():
                norm.momentum = momentum
                if not finished:  # the statistics the model had, not reset ones
                    norm.load_state_dict(state)
            pl_module.train(was_training)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else int(self.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_parameters": None
            if self._average is None
            else [t.detach().cpu() for t in self._average],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.n_averaged = torch.tensor(state_dict.get("n_averaged", 0), dtype=torch.long)
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)
        self._scheduler_state = state_dict.get("scheduler_state")
        saved = state_dict.get("average_parameters")
        if saved is not None:
            self._average = [t.clone().to(self._device or t.device) for t in saved]


__all__ = ["StochasticWeightAveraging"]
