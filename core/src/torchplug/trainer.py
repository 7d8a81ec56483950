"""The Trainer: flags in, backends selected (:mod:`torchplug._selection`), stages run by :mod:`torchplug._loop`.

The Trainer holds what a user reads (flags, ranks, progress, metrics) and the entry points. Selection turns the
arguments into registered plugins and a frozen ``trainer.run``; the loop runs a stage in every process; the state
module (:mod:`torchplug._state`) makes and restores checkpoints.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchplug import _flags, _heartbeat, _legacy, _loop, _selection, _state, _stopping, _trainer_setup
from torchplug._compile import from_compiled, is_compiled_wrapper
from torchplug._errors import ArgumentTypeError, MisconfigurationError
from torchplug._states import RunningStage, StageFlag, TrainerFn, TrainerState, TrainerStatus
from torchplug._types import World
from torchplug.callbacks._base import Callback
from torchplug.module import DataModule, Module

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torchplug._optim import LRSchedulerConfig
    from torchplug.loggers import Logger
    from torchplug.profilers import Profiler

log = logging.getLogger("torchplug")

# The Trainer arguments that _flags.apply checks and sets (the others select backends, callbacks and loggers).
_LOOP_FLAGS = frozenset((
    "fast_dev_run", "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "limit_predict_batches", "overfit_batches", "val_check_interval",
    "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps", "enable_checkpointing",
    "enable_progress_bar", "enable_model_summary", "accumulate_grad_batches", "gradient_clip_val",
    "gradient_clip_algorithm", "deterministic", "benchmark", "inference_mode", "use_distributed_sampler", "profiler",
    "detect_anomaly", "barebones", "reload_dataloaders_every_n_epochs", "default_root_dir", "logger",
))  # fmt: skip


_CARRIED = (
    "max_epochs", "min_epochs", "max_steps", "min_steps", "limit_train_batches", "limit_val_batches",
    "limit_test_batches", "limit_predict_batches", "val_check_interval", "check_val_every_n_epoch",
    "num_sanity_val_steps", "log_every_n_steps", "accumulate_grad_batches", "gradient_clip_val",
    "gradient_clip_algorithm", "should_stop", "current_epoch", "global_step", "progress",
)  # fmt: skip


class _Launch:
    """What ``torchplug_launch`` runs in every process: one stage of one trainer. Picklable for spawn."""

    def __init__(self, trainer: Trainer, stage: str, kwargs: dict[str, Any]) -> None:
        self.trainer, self.stage, self.kwargs = trainer, stage, kwargs
        self.ran_here = False  # stays False in a caller whose strategy ran the stage elsewhere (spawn)

    def __call__(self) -> Any:
        self.ran_here = True
        return _loop.run_stage(self.trainer, self.stage, **self.kwargs)


class Trainer:
    """Trains a :class:`torchplug.Module` on the backends named by ``accelerator``, ``strategy`` and ``precision``.

    Backend-specific options are keyword arguments too (``find_unused_parameters=True``, ``amp_level="O2"``,
    ``auto_select_gpus=True``): each goes to the selected backend whose constructor takes it.
    """

    @_flags.with_env_defaults
    def __init__(
        self,
        *,
        accelerator: str | Any = "auto",
        strategy: str | Any = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int = 1,
        precision: str | int | Any = "32-true",
        plugins: list[Any] | Any | None = None,
        logger: Logger | Iterable[Logger] | bool | None = None,
        callbacks: list[Callback] | Callback | None = None,
        fast_dev_run: bool | int = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | str | timedelta | dict[str, int] | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Profiler | str | None = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike[str] | None = None,
        gpus: Any = None,
        tpu_cores: Any = None,
        num_processes: int | None = None,
        nb_gpu_nodes: int | None = None,
        use_amp: bool | None = None,
        amp_backend: str | None = None,
        distributed_backend: str | None = None,
        **backend_options: Any,
    ) -> None:
        self._init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__", "backend_options")}
        self._init_args.update(backend_options)

        args = {
            "accelerator": accelerator, "strategy": strategy, "devices": devices, "num_nodes": num_nodes,
            "precision": precision, "backend_options": backend_options,
        }  # fmt: skip
        _legacy.translate(
            args,
            {"gpus": gpus, "tpu_cores": tpu_cores, "num_processes": num_processes, "nb_gpu_nodes": nb_gpu_nodes,
             "use_amp": use_amp, "amp_backend": amp_backend, "distributed_backend": distributed_backend},
        )  # fmt: skip

        # ---- flags ------------------------------------------------------------------------------------------
        _flags.check_int("num_nodes", args["num_nodes"], 1)
        self.state = TrainerState()
        switches = _flags.apply(self, {k: v for k, v in self._init_args.items() if k in _LOOP_FLAGS})

        # ---- backends ----------------------------------------------------------------------------------------
        selection = _selection.select(
            accelerator=args["accelerator"], strategy=args["strategy"], devices=args["devices"],
            num_nodes=args["num_nodes"], precision=args["precision"], plugins=plugins,
            options=args["backend_options"],
        )  # fmt: skip
        self.plugin_manager = selection.plugin_manager
        self.hook = self.plugin_manager.hook
        self.run = selection.run
        self.accelerator, self.strategy = selection.accelerator, selection.strategy
        self.precision_plugin, self.environment = selection.precision, selection.environment
        self.world = World()
        self.root_device: torch.device | None = None
        self.hook.torchplug_configure(trainer=self)

        # ---- callbacks and loggers -------------------------------------------------------------------------------
        self.callbacks: list[Callback] = _trainer_setup.default_callbacks(
            callbacks, switches["enable_checkpointing"], switches["enable_progress_bar"],
            switches["enable_model_summary"],
        )  # fmt: skip
        self.enable_progress_bar = switches["enable_progress_bar"]
        self.enable_checkpointing = switches["enable_checkpointing"]
        self.loggers = _trainer_setup.make_loggers(switches["logger"], self.default_root_dir)
        if switches["fast_dev_batches"] and self.loggers:
            from torchplug.loggers import DummyLogger

            self.loggers = [DummyLogger()]  # fast_dev_run logs nothing, as in Lightning

        # ---- what a run leaves for the user to read -----------------------------------------------------------------
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self._progress_bar_metrics: dict[str, torch.Tensor] = {}
        self.num_training_batches: int | float = 0
        self.num_val_batches: list[int | float] = []
        self.num_sanity_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.lightning_module: Module | None = None
        self.datamodule: DataModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.ckpt_path: str | None = None
        self.progress = _loop.Progress()
        self._loop: _loop.Loop | None = None
        self._results: Any = None
        self._header_shown = False
        self._data: dict[str, Any] = {}  # the loaders of the last run of each kind, as given (train, val, ...)
        self._is_last_batch = False
        self._fitted: Module | None = None  # the module the last successful fit trained
        self._checkpoints_saved = 0
        self._last_checkpoint: str | None = None  # the newest full checkpoint this trainer saved, and its step
        self._last_checkpoint_step = -1
        self._received_sigterm = False  # whether the last stage got SIGTERM (while one runs, the live answer)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned process rebuilds the trainer (and its plugin manager) from the constructor arguments, then takes
        # the flags the user may have changed since and what earlier stages left, so a stage runs there as here.
        return {"_init_args": self._init_args, "carried": {name: getattr(self, name) for name in _CARRIED}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["_init_args"])  # type: ignore[misc]
        self.__dict__.update(state.get("carried", {}))

    # ==================================================================================================== properties
    @property
    def accelerator_name(self) -> str:
        return self.run.accelerator

    @property
    def strategy_name(self) -> str:
        return self.run.strategy

    @property
    def precision_name(self) -> str:
        return self.run.precision

    @property
    def environment_name(self) -> str | None:
        return self.run.environment

    @property
    def precision(self) -> str:
        """The precision's name, as in Lightning (``"32-true"``); the plugin is ``precision_plugin``."""
        return self.run.precision

    @property
    def device_ids(self) -> list[int]:
        return list(self.run.device_ids)

    @property
    def num_devices(self) -> int:
        return self.run.num_devices

    @property
    def num_nodes(self) -> int:
        return self.run.num_nodes

    @property
    def num_processes(self) -> int:
        return self.run.num_processes

    @property
    def devices_arg(self) -> Any:
        return self.run.devices_arg

    @property
    def global_rank(self) -> int:
        return self.world.global_rank

    @property
    def local_rank(self) -> int:
        return self.world.local_rank

    @property
    def node_rank(self) -> int:
        return self.world.node_rank

    @property
    def world_size(self) -> int:
        """The job's number of processes: known from the arguments before a run, from the process group in one."""
        return self.world.world_size if self.root_device is not None else self.run.world_size

    @property
    def is_global_zero(self) -> bool:
        return self.world.global_rank == 0

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self.loggers = [] if logger is None else [logger]

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @loggers.setter
    def loggers(self, loggers: Any) -> None:
        self._loggers = list(loggers) if loggers is not None else []

    @property
    def log_dir(self) -> str:
        """The first logger's folder (a versioned one's ``log_dir``; another's ``save_dir``, as in Lightning), else
        ``default_root_dir``."""
        from torchplug.loggers._base import FolderLogger

        logger = self.logger
        candidates = [] if logger is None else (
            [logger.log_dir] if isinstance(logger, FolderLogger) else [getattr(logger, "save_dir", None),
                                                                       getattr(logger, "log_dir", None)])  # fmt: skip
        found = next((c for c in candidates if isinstance(c, (str, os.PathLike))), None)
        return os.fspath(found) if found is not None else self.default_root_dir

    @property
    def model(self) -> nn.Module | None:
        """The strategy's wrapper during a run (DistributedDataParallel, ...); the user's module after it."""
        loop = self._loop
        return loop.wrapped if loop is not None and loop.wrapped is not None else self.lightning_module

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from torchplug.callbacks import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from torchplug.callbacks import EarlyStopping

        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Any:
        found = self.early_stopping_callbacks
        return found[0] if found else None

    @property
    def progress_bar_callback(self) -> Any:
        from torchplug.callbacks import ProgressBar

        return next((c for c in self.callbacks if isinstance(c, ProgressBar)), None)

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """What the progress bar shows (``self.log(..., prog_bar=True)``), read to the host as numbers."""
        return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in self._progress_bar_metrics.items()}

    # ---------------------------------------------------------------------------------------------------- state
    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @interrupted.setter
    def interrupted(self, value: bool) -> None:
        if value:
            self.state.status = TrainerStatus.INTERRUPTED
        elif self.state.status == TrainerStatus.INTERRUPTED:
            self.state.status = TrainerStatus.RUNNING

    @property
    def received_sigterm(self) -> bool:
        """Whether this process received SIGTERM during the running stage (or the last one, after it ended). The
        stage stops after the current step then; code in hooks may read this to wind down early."""
        if self.state.status == TrainerStatus.RUNNING:
            return _stopping.sigterm_received()
        return self._received_sigterm

    training = StageFlag(RunningStage.TRAINING)
    sanity_checking = StageFlag(RunningStage.SANITY_CHECKING)
    validating = StageFlag(RunningStage.VALIDATING)
    testing = StageFlag(RunningStage.TESTING)
    predicting = StageFlag(RunningStage.PREDICTING)

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    # ---------------------------------------------------------------------------------------------------- data
    # The data of the last run of each kind, as given (a loader, or a list or dict of them), set up by the strategy.
    train_dataloader = property(lambda self: self._data.get("train"))
    val_dataloaders = property(lambda self: self._data.get("val"))
    test_dataloaders = property(lambda self: self._data.get("test"))
    predict_dataloaders = property(lambda self: self._data.get("predict"))

    @property
    def enable_validation(self) -> bool:
        """Whether ``fit`` validates: a ``validation_step``, validation data, and ``limit_val_batches`` above 0."""
        return _trainer_setup.validation_enabled(self)

    @property
    def is_last_batch(self) -> bool:
        """True while the loop runs the last batch of the training epoch."""
        return self._is_last_batch

    @property
    def estimated_stepping_batches(self) -> int | float:
        """How many optimizer steps ``fit`` will take at most (``max_steps``, or epochs x batches / accumulation)."""
        from torchplug import _estimate

        return _estimate.stepping_batches(self)

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager[None]:
        """Create the model inside this block to make its parameters in the precision's dtype (``"64-true"``,
        ``"16-true"``, ``"bf16-true"``) and, for a single device, directly on it."""
        return _trainer_setup.init_module(self)

    @property
    def lr_schedulers(self) -> list[Any]:
        return [config.scheduler for config in self.lr_scheduler_configs]

    # ==================================================================================================== entry points
    def fit(
        self,
        model: Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Train ``model``; ``train_dataloaders`` may be a loader, a list or dict of them, or a DataModule."""
        model = self._check_model(model, "fit")
        if isinstance(train_dataloaders, DataModule):  # fit(model, dm), as Lightning accepts
            if datamodule is not None:
                raise MisconfigurationError("fit(): a DataModule was passed as train_dataloaders and as datamodule=")
            train_dataloaders, datamodule = None, train_dataloaders
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationError(
                "fit(): you cannot pass train_dataloaders or val_dataloaders together with datamodule=; pass one"
            )
        self._launch(TrainerFn.FITTING, model=model, loaders={"train": train_dataloaders, "val": val_dataloaders},
                     datamodule=datamodule, ckpt_path=ckpt_path)  # fmt: skip

    def validate(self, model: Module | None = None, dataloaders: Any = None,
                 ckpt_path: str | os.PathLike[str] | None = None, verbose: bool = True,
                 datamodule: DataModule | None = None, weights_only: bool | None = None) -> list[dict[str, float]]:  # fmt: skip
        return self._evaluate(TrainerFn.VALIDATING, model, dataloaders, datamodule, ckpt_path, verbose=verbose)

    def test(self, model: Module | None = None, dataloaders: Any = None,
             ckpt_path: str | os.PathLike[str] | None = None, verbose: bool = True,
             datamodule: DataModule | None = None, weights_only: bool | None = None) -> list[dict[str, float]]:  # fmt: skip
        return self._evaluate(TrainerFn.TESTING, model, dataloaders, datamodule, ckpt_path, verbose=verbose)

    def predict(self, model: Module | None = None, dataloaders: Any = None, datamodule: DataModule | None = None,
                return_predictions: bool | None = None, ckpt_path: str | os.PathLike[str] | None = None,
                weights_only: bool | None = None) -> list[Any] | None:  # fmt: skip
        """Run ``predict_step`` over the data; with ``return_predictions=False`` keep nothing (for prediction
        writers on large data) and return None."""
        if return_predictions is not None and not isinstance(return_predictions, bool):
            raise ArgumentTypeError(f"predict(return_predictions={return_predictions!r}): expected True, False or None")
        return self._evaluate(TrainerFn.PREDICTING, model, dataloaders, datamodule, ckpt_path,
                              return_predictions=return_predictions is not False)  # fmt: skip

    def _evaluate(self, fn: TrainerFn, model: Any, dataloaders: Any, datamodule: Any, ckpt_path: Any,
                  **options: Any) -> Any:  # fmt: skip
        if model is None:
            if self.lightning_module is None:
                raise ArgumentTypeError(
                    f"`Trainer.{fn.value}()` requires a `LightningModule` (a torchplug.Module) when none was passed "
                    f"in a previous run: call {fn.value}(model)"
                )
            model = self.lightning_module
            if ckpt_path is None and self._fitted is model:
                ckpt_path = _loop.default_eval_checkpoint(self, fn.value)
        model = self._check_model(model, fn.value)
        if isinstance(dataloaders, DataModule):
            if datamodule is not None:
                raise MisconfigurationError(f"{fn.value}(): a DataModule was passed as dataloaders and as datamodule=")
            dataloaders, datamodule = None, dataloaders
        if datamodule is not None and dataloaders is not None:
            raise MisconfigurationError(f"{fn.value}(): you cannot pass dataloaders together with datamodule=; pass one")
        return self._launch(fn, model=model, loaders={fn.value: dataloaders}, datamodule=datamodule,
                            ckpt_path=ckpt_path, options=options)  # fmt: skip

    @staticmethod
    def _check_model(model: Any, stage: str) -> Module:
        if is_compiled_wrapper(model):  # torch.compile(module): train the module, its steps compiled
            model = from_compiled(model)
        if not isinstance(model, Module):
            raise ArgumentTypeError(
                f"`Trainer.{stage}()` requires a `LightningModule`: `model` must be a `LightningModule` (a "
                f"torchplug.Module), got `{type(model).__qualname__}`"
            )
        return model

    def _launch(self, fn: TrainerFn, **kwargs: Any) -> Any:
        self.state.fn, self.state.status = fn, TrainerStatus.RUNNING
        self.lightning_module = kwargs["model"]  # the caller's module, for strategies that return results to it
        launch = _Launch(self, fn.value, kwargs)
        try:
            result = self.hook.torchplug_launch(trainer=self, function=launch)
        except _stopping.Stopped:
            self.interrupted = True  # the stage's processes stopped on a signal (ddp_spawn's caller learns it here)
            raise
        except BaseException as exc:
            if not launch.ran_here:  # it failed in spawned processes: tell this process's callbacks too
                self._interrupted_elsewhere(exc, kwargs.get("datamodule"))
            raise
        if result is None:
            raise RuntimeError(f"strategy {self.strategy_name!r} answered torchplug_launch with None")
        return result[0]

    def _interrupted_elsewhere(self, exc: BaseException, datamodule: DataModule | None) -> None:
        """The caller's side of a stage that ran in spawned processes and raised: as Lightning does there, the
        caller's callbacks and datamodule get ``on_exception`` (the processes' copies got theirs)."""
        self.interrupted = True
        for callback in self.callbacks:
            callback.on_exception(self, self.lightning_module, exc)
        if datamodule is not None:
            datamodule.on_exception(exc)

    @property
    def stage(self) -> str | None:
        """The running entry point's name (``"fit"``, ``"validate"``, ...), the value of ``state.fn``."""
        return self.state.fn.value if self.state.fn is not None else None

    # ==================================================================================================== collectives
    def barrier(self, name: str = "") -> None:
        self.hook.torchplug_barrier(trainer=self, name=name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.hook.torchplug_broadcast(trainer=self, obj=obj, src=src)[0]

    def _log_to_loggers(self, metrics: dict[str, float], step: int) -> None:
        """Write to every logger on global rank 0 (callbacks such as LearningRateMonitor use this too)."""
        if self.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics=metrics, step=step)

    # ==================================================================================================== checkpoints
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Write a checkpoint of the whole run; every rank must call this (the strategy decides who writes what)."""
        path = os.fspath(filepath)
        phase = _heartbeat.enter("saving a checkpoint")
        _state.save_checkpoint(self, path, weights_only)
        if phase is not None:
            _heartbeat.enter(phase)
        self._checkpoints_saved += 1
        if not weights_only:
            self._last_checkpoint, self._last_checkpoint_step = path, self.global_step
            _stopping.note_saved(self, path)
