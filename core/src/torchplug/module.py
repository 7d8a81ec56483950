"""``Module`` and ``DataModule``: Lightning's names, so a LightningModule ports by changing its imports."""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import functools
import inspect
import numbers
import os
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from torchplug import _hparams, _results
from torchplug._errors import MisconfigurationError
from torchplug._hparams import HyperparametersMixin
from torchplug.utilities import LightningDeprecationWarning, apply_to_collection, move_data_to_device

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


_JIT_READING = contextvars.ContextVar("torchplug_jit_reading", default=False)


@contextlib.contextmanager
def _jit_reading() -> Generator[None, None, None]:
    """While ``torch.jit`` traces or scripts a module (``to_torchscript``, TensorBoard's ``add_graph``), an unattached
    module's ``trainer`` reads ``None`` instead of raising: torch reads every attribute of the module and counts only
    ``AttributeError`` as absent."""
    token = _JIT_READING.set(True)
    try:
        yield
    finally:
        _JIT_READING.reset(token)


class _ClassOnly:
    """A classmethod that refuses to be called on an instance (whose result would be silently dropped); reading it
    from an instance is fine (``torch.jit.script`` and ``inspect`` do)."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.__doc__ = method.__doc__

    def __get__(self, instance: Any, owner: type) -> Callable[..., Any]:
        method = self.method

        @functools.wraps(method)
        def bound(*args: Any, **kwargs: Any) -> Any:
            if instance is not None:
                raise TypeError(
                    f"The classmethod `{owner.__name__}.{method.__name__}` cannot be called on an instance. Please "
                    "call it on the class type and make sure the return value is used."
                )
            return method(owner, *args, **kwargs)

        return bound


class Module(HyperparametersMixin, nn.Module):
    """A ``torch.nn.Module`` that also says how to train itself.

    Implement ``training_step`` (return the loss, a dict with a ``"loss"`` key, or ``None`` to skip the batch) and
    ``configure_optimizers``; everything else is optional. Never call ``.cuda()`` or ``.to(device)``: the trainer
    moves the module, its buffers and every batch; use ``self.device`` or ``tensor.type_as(x)`` for new tensors.
    """

    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._strict_loading: bool | None = None
        self._example_input_array: Any = None
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

    def on_validation_model_eval(self) -> None:
        """Put the model in eval mode for validation (override to change that)."""
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        """After validation; when overridden it replaces restoring each submodule's mode as it was before."""
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        """Put the model in eval mode for ``test`` (override to change that)."""
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        """After ``test``; when overridden it replaces restoring each submodule's mode as it was before."""
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        """Put the model in eval mode for ``predict`` (override to change that)."""
        self.trainer.model.eval()

    def configure_model(self) -> None:
        """Create or change layers right before setup (after ``setup``, before ``configure_optimizers``)."""

    def configure_callbacks(self) -> Any:
        """Callbacks this module needs: they replace the Trainer's callbacks of the same type (asked every stage)."""
        return []

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
        if self._trainer is None and not _JIT_READING.get():
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

    @property
    def loggers(self) -> list[Any]:
        """The trainer's loggers (an empty list without a trainer)."""
        return list(self._trainer.loggers) if self._trainer is not None else []

    @property
    def strict_loading(self) -> bool:
        """Whether ``load_from_checkpoint`` requires the checkpoint's keys to match the module's exactly."""
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, strict: bool) -> None:
        self._strict_loading = strict

    @property
    def example_input_array(self) -> Any:
        """An input for ``forward`` (a tensor, a tuple of positional inputs or a dict of keyword inputs), used by
        ``to_onnx`` and ``to_torchscript(method="trace")``."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    # ---------------------------------------------------------------- logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record a scalar (a number, a one-element tensor, or a ``torchmetrics.Metric``).

        The defaults depend on the hook, as in Lightning: per step in ``training_step`` and the training batch
        hooks, per epoch (the mean over the epoch, weighted by the batch size) in evaluation steps and in epoch
        hooks. A value logged both ways is reported as ``name_step`` and ``name_epoch``. Values stay on their
        device: they are read to the host only at the logging interval. ``sync_dist=True`` reduces the value
        across processes with ``reduce_fx`` (mean, sum, max, min). A Metric is reported per step with the value
        of its last ``forward`` and per epoch with ``compute()``; it is reset after each epoch.
        """
        if type(value) is not torch.Tensor:  # (a tensor is always accepted: no call for the common case)
            _results.check_value(name, value)
            if metric_attribute is None and _results.is_metric(value):
                self._check_metric_attribute(name, value)
        trainer = self._trainer
        if trainer is None:
            warnings.warn(
                "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model yet. "
                "This is most likely because the model hasn't been passed to the `Trainer`",
                UserWarning,
                stacklevel=2,
            )
            return
        loop = trainer._loop
        if loop is not None and loop.stage == "predict":
            raise MisconfigurationError(
                f"You are trying to `self.log({name!r}, ...)` but the loop's result collection is not registered yet: "
                "`predict` and its hooks do not support logging (return what you want to keep from predict_step, or "
                "write it with a BasePredictionWriter)"
            )
        hook = loop.current_hook if loop is not None else None
        levels = _results.LEVELS_CHECKED.get((hook, on_step, on_epoch))  # answered before: a dict lookup
        on_step, on_epoch = levels if levels is not None else _results.logging_levels(hook, name, on_step, on_epoch)
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationError(
                f"You called `self.log` with the key `{name}` but it should not contain information about "
                "`dataloader_idx` when `add_dataloader_idx=True`"
            )
        results = trainer._results
        if results is None:
            raise MisconfigurationError(f"self.log({name!r}, ...) was called while no stage of the Trainer is running")
        if logger is True and not trainer.loggers:
            warnings.warn(
                f"You called `self.log({name!r}, ..., logger=True)` but have no logger configured. You can enable one "
                "by doing `Trainer(logger=ALogger(...))`",
                UserWarning,
                stacklevel=2,
            )
        results.log(
            name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, batch_size, add_dataloader_idx
        )

    def _check_metric_attribute(self, name: str, metric: Any) -> None:
        """A logged torchmetrics Metric must be an attribute of the module (as Lightning requires: its state is the
        module's); the attributes holding Metrics are looked up once, and again when a metric is not among them (one
        made anew in ``setup`` for a later stage)."""
        found = self.__dict__.get("_metric_attributes")
        if found is None or id(metric) not in found:
            found = {id(m): n for n, m in self.named_modules() if _results.is_metric(m)}
            self.__dict__["_metric_attributes"] = found
        if not found:
            raise MisconfigurationError(
                f"Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged as {name!r}. "
                "You can fix this by setting an attribute for the metric in your `LightningModule` (self.acc = "
                "Accuracy(...)), then logging that attribute."
            )
        if id(metric) not in found:
            raise MisconfigurationError(
                f"Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged. You can fix "
                f"this by calling `self.log({name}, ..., metric_attribute=name)` where `name` is one of "
                f"{list(found.values())}"
            )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``self.log`` for each item of ``dictionary`` (a ``torchmetrics.MetricCollection`` too)."""
        if _results.is_metric_collection(dictionary):  # its metrics under their names in the collection
            # members of a compute group share their state: copying it would make each compute alone again
            grouped = bool(getattr(dictionary, "_enable_compute_groups", True))
            items = dictionary.items(keep_base=False, copy_state=not grouped)  # type: ignore[call-arg]
        else:
            items = dictionary.items()
        for name, value in items:
            self.log(
                name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only,
            )  # fmt: skip

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only (every process prints without a trainer), through the progress bar when
        one shows, so that the text does not break it."""
        if self._trainer is None or self._trainer.is_global_zero:
            bar = None if self._trainer is None else self._trainer.progress_bar_callback
            if bar is not None and bar.is_enabled:
                bar.print(*args, **kwargs)
            else:
                builtins.print(*args, **kwargs)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Every process's ``data`` (tensors, numbers, or collections of them), stacked along a new first
        dimension of size ``world_size``; with one process, ``data`` as tensors, unchanged in shape."""
        trainer = self._trainer
        device = self.device

        def gather(value: Any) -> torch.Tensor:
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value, device=device)
            if trainer is None or trainer.world_size == 1:
                return tensor
            if sync_grads:
                raise MisconfigurationError(
                    "all_gather(..., sync_grads=True): gradients through all_gather are not supported by "
                    f"strategy {trainer.strategy_name!r}; gather detached values"
                )
            return trainer.hook.torchplug_all_gather(trainer=trainer, tensor=tensor)

        return apply_to_collection(data, (torch.Tensor, numbers.Number), gather)

    # ---------------------------------------------------------------- manual optimization
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers from ``configure_optimizers``; ``.step()`` on them runs the precision/strategy hooks."""
        loop = self.trainer._loop
        handles = loop.handles if use_pl_optimizer and loop is not None else None
        opts = handles or self.trainer.optimizers  # after a run: the optimizers themselves
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
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip ``optimizer``'s gradients by ``"norm"`` or ``"value"`` (the Trainer's settings when not given; a
        value that contradicts the Trainer's ``gradient_clip_val`` is refused)."""
        trainer = self.trainer
        if gradient_clip_val is None:
            gradient_clip_val = trainer.gradient_clip_val or 0.0
        elif trainer.gradient_clip_val is not None and trainer.gradient_clip_val != gradient_clip_val:
            raise MisconfigurationError(
                f"You have set `Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and have passed "
                f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them."
            )
        if isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, (int, float)):
            raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {gradient_clip_val!r}.")
        if gradient_clip_algorithm is None:
            algorithm = (trainer.gradient_clip_algorithm or "norm").lower()
        else:
            algorithm = str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm)).lower()
            set_on_trainer = trainer.gradient_clip_algorithm
            if set_on_trainer is not None and set_on_trainer.lower() != algorithm:
                raise MisconfigurationError(
                    f"You have set `Trainer(gradient_clip_algorithm={trainer.gradient_clip_algorithm!r})` and have "
                    f"passed `clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r})`. Please use only "
                    "one of them."
                )
            if algorithm not in ("norm", "value"):
                raise MisconfigurationError(
                    f"clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r}): use 'norm' or 'value'"
                )
        if gradient_clip_val:
            trainer._loop.clip_gradients(optimizer, gradient_clip_val, algorithm)

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

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Generator[None, None, None]:
        """``toggle_optimizer(optimizer)`` for the ``with`` block, ``untoggle_optimizer`` after it."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    # ---------------------------------------------------------------- inference and export
    def freeze(self) -> Module:
        """No gradients for any parameter, and eval mode (for inference). Returns the module, as ``eval()`` does."""
        for parameter in self.parameters():
            parameter.requires_grad = False
        return self.eval()

    def unfreeze(self) -> Module:
        """Gradients for every parameter again, and train mode. Returns the module, as ``train()`` does."""
        for parameter in self.parameters():
            parameter.requires_grad = True
        return self.train()

    def _example_inputs(self, given: Any, what: str) -> Any:
        example = given if given is not None else self.example_input_array
        if example is None:
            raise ValueError(
                f"{what} needs an example input: pass one, or set `model.example_input_array` (a tensor, a tuple "
                "of positional inputs or a dict of keyword inputs for forward)"
            )
        return move_data_to_device(example, self.device)

    @torch.no_grad()
    def to_onnx(self, file_path: str | Path | Any, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export to ONNX with ``torch.onnx.export`` (in eval mode; each submodule's mode is restored after). Needs
        ``onnx``."""
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise ModuleNotFoundError(f"`{type(self).__name__}.to_onnx()` requires `onnx` to be installed.")
        if input_sample is None and self.example_input_array is None:
            raise ValueError(
                "Could not export to ONNX since neither `input_sample` nor `model.example_input_array` attribute "
                f"is set: pass {type(self).__name__}.to_onnx(path, input_sample) an input for forward (a tensor or "
                "a tuple of positional inputs)"
            )
        example = self._example_inputs(input_sample, f"{type(self).__name__}.to_onnx()")
        modes = {m: m.training for m in self.modules()}
        try:
            self.eval()
            args = example if isinstance(example, tuple) else (example,)
            return torch.onnx.export(self, args, file_path, **kwargs)
        finally:
            for submodule, training in modes.items():
                submodule.training = training

    @torch.no_grad()
    def to_torchscript(
        self, file_path: str | Path | None = None, method: str | None = "script", example_inputs: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        """The module as a ``torch.jit.ScriptModule`` (``method="script"`` or ``"trace"``), in eval mode; saved to
        ``file_path`` when given. Needs no Trainer. Each submodule's mode is restored after.

        Deprecated, as in Lightning 2.7: TorchScript is deprecated in PyTorch; export with ``torch.export.export``.
        """
        warnings.warn(
            f"`{type(self).__name__}.to_torchscript` has been deprecated in v2.7 and will be removed in v2.8 (the "
            "Lightning API versions torchplug follows): TorchScript is deprecated in PyTorch. Export with "
            "`torch.export.export()` instead (https://pytorch.org/docs/stable/export.html).",
            LightningDeprecationWarning,
            stacklevel=3,  # the caller's line: torch.no_grad's wrapper sits in between
        )
        if method not in ("script", "trace"):
            raise ValueError(
                f"to_torchscript(method={method!r}): the 'method' parameter only supports 'script' or 'trace'"
            )
        if method == "trace":
            if example_inputs is None and self.example_input_array is None:
                raise ValueError(
                    "to_torchscript(method='trace') requires either `example_inputs` or "
                    "`model.example_input_array` to be defined: pass one (a tensor or a tuple of positional inputs)"
                )
            example = self._example_inputs(example_inputs, "to_torchscript(method='trace')")
            if kwargs.get("check_inputs") is not None:
                kwargs["check_inputs"] = move_data_to_device(kwargs["check_inputs"], self.device)
        modes = {m: m.training for m in self.modules()}
        try:
            with _jit_reading():
                if method == "script":
                    scripted = torch.jit.script(self.eval(), **kwargs)
                else:
                    scripted = torch.jit.trace(func=self.eval(), example_inputs=example, **kwargs)
        finally:
            for submodule, training in modes.items():
                submodule.training = training
        if file_path is not None:
            with open(os.fspath(file_path), "wb") as f:
                torch.jit.save(scripted, f)
        return scripted

    # ---------------------------------------------------------------- checkpoints
    @_ClassOnly
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | Any,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new module built with the hyperparameters saved in the checkpoint (``kwargs`` override them), holding
        its weights. ``strict`` (default: ``strict_loading``) requires the keys to match. The file is read with
        ``weights_only=True`` unless you pass ``weights_only=False`` for a file you trust; ``map_location`` is
        as for ``torch.load`` (the CPU by default)."""
        return _hparams.load_from_checkpoint(
            cls, checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
            weights_only=weights_only, **kwargs,
        )  # fmt: skip



def _unwrap(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)


class DataModule(HyperparametersMixin):
    """Data in one place: ``prepare_data`` (once per node), ``setup(stage)``, the four loaders, ``teardown``."""

    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self) -> None:
        super().__init__()
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

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset | Iterable[Dataset] | None = None,
        val_dataset: Dataset | Iterable[Dataset] | None = None,
        test_dataset: Dataset | Iterable[Dataset] | None = None,
        predict_dataset: Dataset | Iterable[Dataset] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> DataModule:
        """A datamodule whose loaders are ``DataLoader``s over the given datasets (a dataset or a collection of
        them; the training ones shuffled). ``batch_size`` and ``num_workers`` also reach ``__init__`` where it
        takes them; other keyword arguments are passed to it."""

        def loaders(datasets: Any, shuffle: bool) -> Callable[[], Any]:
            def make(dataset: Dataset) -> DataLoader:
                return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=True,
                                  shuffle=shuffle and not isinstance(dataset, IterableDataset))  # fmt: skip

            return lambda: apply_to_collection(datasets, Dataset, make)

        parameters = inspect.signature(cls.__init__).parameters
        given = {"batch_size": batch_size, "num_workers": num_workers}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            given = {k: v for k, v in given.items() if k in parameters}
        datamodule = cls(**datamodule_kwargs, **given)
        for kind, datasets in (("train", train_dataset), ("val", val_dataset), ("test", test_dataset),
                               ("predict", predict_dataset)):  # fmt: skip
            if datasets is not None:
                setattr(datamodule, f"{kind}_dataloader", loaders(datasets, shuffle=kind == "train"))
        return datamodule

    def __str__(self) -> str:
        """Each loader's dataset size (``size=N``, ``NA`` without a length; ``None`` when there is no loader)."""

        def describe(loader: Any) -> str:
            dataset = getattr(loader, "dataset", None)
            return f"size={len(dataset)}" if isinstance(dataset, Sized) else "size=NA"

        lines = []
        for label, kind in (("Train", "train"), ("Validation", "val"), ("Test", "test"), ("Predict", "predict")):
            try:
                loader = getattr(self, f"{kind}_dataloader")()
            except Exception:
                loader = None
            if loader is None:
                text = "None"
            elif isinstance(loader, (list, tuple)):
                text = " ; ".join(f"{i}. {describe(item)}" for i, item in enumerate(loader, 1))
            elif isinstance(loader, Mapping):
                text = " ; ".join(f"{i}. {describe(item)}" for i, item in enumerate(loader.values(), 1))
            else:
                text = describe(loader)
            lines.append(f"{{{label} dataloader: {text}}}")
        return os.linesep.join(lines)

    @_ClassOnly
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | Any,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new datamodule built with the hyperparameters it saved in the checkpoint (``kwargs`` override them),
        with its ``state_dict`` restored."""
        return _hparams.load_from_checkpoint(
            cls, checkpoint_path, map_location=map_location, hparams_file=hparams_file, weights_only=weights_only,
            **kwargs,
        )  # fmt: skip


LightningModule = Module
LightningDataModule = DataModule

# torch.jit.script compiles properties unless they are listed: these read the trainer and other Python objects.
Module.__jit_unused_properties__ = sorted(
    {name for name in dir(Module) if isinstance(getattr(Module, name, None), property)}
    | set(HyperparametersMixin.__jit_unused_properties__)
)

__all__ = ["DataModule", "HyperparametersMixin", "LightningDataModule", "LightningModule", "Module"]
