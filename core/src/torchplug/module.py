"""``Module`` and ``DataModule``: Lightning's names, so a LightningModule ports by changing its imports."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchplug._errors import MisconfigurationError
from torchplug.utilities import move_data_to_device

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from torchplug.trainer import Trainer

_MODULE_HOOKS = (
    "setup", "teardown", "prepare_data",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_validation_start", "on_validation_end", "on_test_start", "on_test_end", "on_predict_start", "on_predict_end",
    "on_train_batch_start", "on_train_batch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "on_save_checkpoint", "on_load_checkpoint",
)  # fmt: skip


class Module(nn.Module):
    """A ``torch.nn.Module`` that also says how to train itself.

    Implement ``training_step`` (return the loss, a dict with a ``"loss"`` key, or ``None`` to skip the batch) and
    ``configure_optimizers``; everything else is optional. Never call ``.cuda()`` or ``.to(device)``: the trainer
    moves the module, its buffers and every batch; use ``self.device`` or ``tensor.type_as(x)`` for new tensors.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._hparams: dict[str, Any] = {}
        self.automatic_optimization: bool = True

    # ---------------------------------------------------------------- what the user implements
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationError(f"{type(self).__name__} must implement training_step to be used with fit()")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationError(f"{type(self).__name__} must implement test_step to be used with test()")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise MisconfigurationError(
            f"{type(self).__name__} must implement configure_optimizers to be used with fit(): return an "
            "optimizer, a list of them, (optimizers, schedulers), or a dict with 'optimizer' and 'lr_scheduler'"
        )

    def train_dataloader(self) -> Any:
        return None

    def val_dataloader(self) -> Any:
        return None

    def test_dataloader(self) -> Any:
        return None

    def predict_dataloader(self) -> Any:
        return None

    # ---------------------------------------------------------------- hooks (no-ops; override any)
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def prepare_data(self) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_exception(self, exception: BaseException) -> None: ...
    def configure_model(self) -> None:
        """Create or change layers right before setup (after ``setup``, before ``configure_optimizers``)."""

    def configure_callbacks(self) -> Any:
        """Callbacks this module needs: they replace the Trainer's callbacks of the same type (asked every stage)."""
        return []

    # Train/eval mode around evaluation: the loop calls ``on_<stage>_model_eval`` before it and, when overridden,
    # ``on_<stage>_model_train`` after it (otherwise every submodule gets back the mode it had).
    def on_validation_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_validation_model_zero_grad(self) -> None:
        """Before a validation inside ``fit``: release the gradients (Lightning's default)."""
        self.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- how the loop trains (override to change)
    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backpropagate ``loss`` (already scaled by a mixed precision plugin)."""
        loss.backward(*args, **kwargs)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        """Step ``optimizer`` (a handle: its ``step`` runs the run's precision and strategy); the closure runs
        ``training_step``, ``zero_grad`` and backward, and must be called (``optimizer.step`` calls it)."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip before each optimizer step; by default with the Trainer's ``gradient_clip_val``/``_algorithm``."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step() if metric is None else scheduler.step(metric)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        loop = self._trainer._loop if self._trainer is not None else None
        if loop is not None and loop.ops is not None and device == self._trainer.root_device:
            return loop.ops.to_device(batch)
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    # ---------------------------------------------------------------- trainer state
    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(model) first")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        if self._trainer is not None and self._trainer.root_device is not None:
            return self._trainer.root_device
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            return tensor.dtype
        return torch.get_default_dtype()

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer is not None else None

    # ---------------------------------------------------------------- logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool = True,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Any = "mean",
        sync_dist: bool = False,
        batch_size: int | None = None,
        add_dataloader_idx: bool = True,
    ) -> None:
        """Record a scalar. In ``training_step`` the default is per step; in evaluation, per epoch (the mean).

        Values stay on their device: they are read to the host only at the logging interval.
        ``sync_dist=True`` reduces the value across processes with ``reduce_fx`` (mean, sum, max, min).
        """
        trainer = self._trainer
        if trainer is None or trainer._results is None:
            return
        trainer._results.log(
            name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, batch_size, add_dataloader_idx
        )

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, **kwargs)

    # ---------------------------------------------------------------- manual optimization
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers from ``configure_optimizers``; ``.step()`` on them runs the precision/strategy hooks."""
        loop = self.trainer._loop
        opts = loop.handles if use_pl_optimizer and loop is not None else self.trainer.optimizers
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self) -> Any:
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, optimizer: Optimizer | None = None) -> None:
        """``loss.backward()`` through the precision plugin (AMP scales the loss)."""
        self.trainer._loop.backward(loss, optimizer)

    def clip_gradients(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm"
    ) -> None:
        if gradient_clip_val:
            self.trainer._loop.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze parameters owned only by other optimizers (for GAN-style manual optimization)."""
        wanted = {id(p) for group in _unwrap(optimizer).param_groups for p in group["params"]}
        self._toggled = {}
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in wanted and id(p) not in self._toggled:
                        self._toggled[id(p)] = (p, p.requires_grad)
                        p.requires_grad_(False)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        for p, requires_grad in getattr(self, "_toggled", {}).values():
            p.requires_grad_(requires_grad)
        self._toggled = {}

    # ---------------------------------------------------------------- hyperparameters
    def save_hyperparameters(self, *names: str, ignore: list[str] | str | None = None) -> None:
        """Store the ``__init__`` arguments of the caller in ``self.hparams`` and in every checkpoint."""
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        init_args: dict[str, Any] = {}
        caller = frame.f_back
        # Walk out through the __init__ chain of this object (subclass calling super().__init__), so the
        # outermost class's arguments win, as in Lightning.
        while caller is not None and caller.f_code.co_name == "__init__" and caller.f_locals.get("self") is self:
            init_args = {**init_args, **_init_arguments(caller)}
            caller = caller.f_back
        if names:
            if len(names) == 1 and isinstance(names[0], Mapping):
                init_args = dict(names[0])
            else:
                init_args = {k: init_args[k] for k in names if k in init_args}
        ignored = [ignore] if isinstance(ignore, str) else list(ignore or [])
        self._hparams = {k: copy.deepcopy(v) for k, v in init_args.items() if k not in ignored}

    @property
    def hparams(self) -> dict[str, Any]:
        return self._hparams


def _init_arguments(frame: Any) -> dict[str, Any]:
    code = frame.f_code
    names = list(code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount])
    values = {k: frame.f_locals[k] for k in names if k in frame.f_locals}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        index = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)
        extra = frame.f_locals.get(code.co_varnames[index], {})
        if isinstance(extra, dict):
            values.update(extra)
    return values


def _unwrap(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)


class DataModule:
    """Data in one place: ``prepare_data`` (once per node), ``setup(stage)``, the four loaders, ``teardown``."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_exception(self, exception: BaseException) -> None: ...

    def train_dataloader(self) -> Any:
        return None

    def val_dataloader(self) -> Any:
        return None

    def test_dataloader(self) -> Any:
        return None

    def predict_dataloader(self) -> Any:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...

    # The batch transfer hooks, as on the module; a datamodule's override is used instead of the module's.
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch


LightningModule = Module
LightningDataModule = DataModule

__all__ = ["DataModule", "LightningDataModule", "LightningModule", "Module"]
