"""The Trainer: flags in, backends selected (:mod:`torchplug._selection`), stages run by :mod:`torchplug._loop`.

The Trainer holds what a user reads (flags, ranks, progress, metrics) and the entry points. Selection turns the
arguments into registered plugins and a frozen ``trainer.run``; the loop runs a stage in every process; the state
module (:mod:`torchplug._state`) makes and restores checkpoints.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchplug import _heartbeat, _legacy, _loop, _selection, _state, _stopping
from torchplug._errors import MisconfigurationError
from torchplug._types import World
from torchplug.callbacks._base import Callback
from torchplug.module import DataModule, Module

if TYPE_CHECKING:
    from torchplug._optim import LRSchedulerConfig

log = logging.getLogger("torchplug")


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

    def __call__(self) -> Any:
        return _loop.run_stage(self.trainer, self.stage, **self.kwargs)


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MisconfigurationError(f"{name}={value!r}: expected an int >= {minimum}{' or None' if allow_none else ''}")


def _check_limit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MisconfigurationError(f"{name}={value!r}: expected an int (batches) or a float in [0.0, 1.0] (fraction)")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise MisconfigurationError(
            f"{name}={value!r}: a float is a fraction of the batches and must be in [0.0, 1.0]; "
            "use an int for a number of batches"
        )
    if isinstance(value, int) and value < 0:
        raise MisconfigurationError(f"{name}={value!r}: a number of batches cannot be negative")


def _check_root_dir(path: str) -> None:
    """``default_root_dir`` must be a folder or creatable as one: no part of it may be a file."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    if os.path.exists(current) and not os.path.isdir(current):
        where = "is a file" if current == os.path.abspath(path) else f"is inside {current!r}, which is a file"
        raise MisconfigurationError(
            f"default_root_dir={path!r} {where}: it must be a folder (one that does not exist yet is created); "
            "pass the folder logs and checkpoints should go to"
        )


class Trainer:
    """Trains a :class:`torchplug.Module` on the backends named by ``accelerator``, ``strategy`` and ``precision``.

    Backend-specific options are keyword arguments too (``find_unused_parameters=True``, ``amp_level="O2"``,
    ``auto_select_gpus=True``): each goes to the selected backend whose constructor takes it.
    """

    def __init__(
        self,
        *,
        accelerator: str | Any = "auto",
        strategy: str | Any = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int = 1,
        precision: str | int | Any = "32-true",
        plugins: list[Any] | Any | None = None,
        logger: Any = True,
        callbacks: list[Callback] | Callback | None = None,
        fast_dev_run: bool | int = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        limit_train_batches: int | float = 1.0,
        limit_val_batches: int | float = 1.0,
        limit_test_batches: int | float = 1.0,
        limit_predict_batches: int | float = 1.0,
        val_check_interval: int | float = 1.0,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int = 2,
        log_every_n_steps: int = 50,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        enable_model_summary: bool = True,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        deterministic: bool | str = False,
        benchmark: bool | None = None,
        use_distributed_sampler: bool = True,
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
        _check_int("num_nodes", args["num_nodes"], 1)
        if isinstance(fast_dev_run, bool):
            fast_dev_batches = 1 if fast_dev_run else 0
        else:
            _check_int("fast_dev_run", fast_dev_run, 0)
            fast_dev_batches = fast_dev_run
        if max_epochs is None:
            max_epochs = -1 if max_steps != -1 else 1000
        _check_int("max_epochs", max_epochs, -1)
        _check_int("min_epochs", min_epochs, 0, allow_none=True)
        _check_int("max_steps", max_steps, -1)
        _check_int("min_steps", min_steps, 0, allow_none=True)
        if min_epochs is not None and max_epochs != -1 and min_epochs > max_epochs:
            raise MisconfigurationError(f"min_epochs={min_epochs} is larger than max_epochs={max_epochs}")
        if min_steps is not None and max_steps != -1 and min_steps > max_steps:
            raise MisconfigurationError(f"min_steps={min_steps} is larger than max_steps={max_steps}")
        for name, value in (
            ("limit_train_batches", limit_train_batches), ("limit_val_batches", limit_val_batches),
            ("limit_test_batches", limit_test_batches), ("limit_predict_batches", limit_predict_batches),
        ):  # fmt: skip
            _check_limit(name, value)
        if isinstance(val_check_interval, bool) or not isinstance(val_check_interval, (int, float)):
            raise MisconfigurationError(f"val_check_interval={val_check_interval!r}: expected an int or a float")
        if isinstance(val_check_interval, float) and not 0.0 < val_check_interval <= 1.0:
            raise MisconfigurationError(
                f"val_check_interval={val_check_interval!r}: a float is a fraction of the epoch in (0.0, 1.0]; "
                "use an int for every N training batches"
            )
        if isinstance(val_check_interval, int) and val_check_interval < 1:
            raise MisconfigurationError(f"val_check_interval={val_check_interval!r}: must be at least 1 batch")
        _check_int("check_val_every_n_epoch", check_val_every_n_epoch, 1, allow_none=True)
        _check_int("num_sanity_val_steps", num_sanity_val_steps, -1)
        _check_int("log_every_n_steps", log_every_n_steps, 1)
        _check_int("accumulate_grad_batches", accumulate_grad_batches, 1)
        if gradient_clip_val is not None and (
            isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, (int, float)) or gradient_clip_val < 0
        ):
            raise MisconfigurationError(f"gradient_clip_val={gradient_clip_val!r}: expected a number >= 0 or None")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise MisconfigurationError(f"gradient_clip_algorithm={gradient_clip_algorithm!r}: use 'norm' or 'value'")
        if deterministic not in (True, False, "warn"):
            raise MisconfigurationError(f"deterministic={deterministic!r}: use True, False or 'warn'")

        self.max_epochs, self.min_epochs, self.max_steps, self.min_steps = max_epochs, min_epochs, max_steps, min_steps
        self.limit_train_batches, self.limit_val_batches = limit_train_batches, limit_val_batches
        self.limit_test_batches, self.limit_predict_batches = limit_test_batches, limit_predict_batches
        self.val_check_interval, self.check_val_every_n_epoch = val_check_interval, check_val_every_n_epoch
        self.num_sanity_val_steps, self.log_every_n_steps = num_sanity_val_steps, log_every_n_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = float(gradient_clip_val) if gradient_clip_val else None
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.deterministic, self.benchmark = deterministic, benchmark
        self.use_distributed_sampler = use_distributed_sampler
        self.fast_dev_run = fast_dev_batches
        if fast_dev_batches:
            self.max_epochs, self.max_steps, self.num_sanity_val_steps = 1, fast_dev_batches, 0
            self.limit_train_batches = self.limit_val_batches = fast_dev_batches
            self.limit_test_batches = self.limit_predict_batches = fast_dev_batches
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            logger, enable_checkpointing = False, False
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        _check_root_dir(self.default_root_dir)

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
        self.callbacks: list[Callback] = self._default_callbacks(
            callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary
        )
        self.enable_progress_bar, self.enable_checkpointing = enable_progress_bar, enable_checkpointing
        self.loggers = self._make_loggers(logger)

        # ---- what a run leaves for the user to read -----------------------------------------------------------------
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.interrupted = False  # the last stage ended by an exception (a signal's stop included), as in Lightning
        self.sanity_checking = False
        self.training = False
        self.stage: str | None = None
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, float] = {}
        self.progress_bar_metrics: dict[str, torch.Tensor] = {}
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
        self._checkpoints_saved = 0
        self._last_checkpoint: str | None = None  # the newest full checkpoint this trainer saved, and its step
        self._last_checkpoint_step = -1

    # ==================================================================================================== construction
    def _default_callbacks(
        self, callbacks: Any, checkpointing: bool, progress_bar: bool, model_summary: bool
    ) -> list[Callback]:
        from torchplug import callbacks as cb

        given = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
        for c in given:
            if not isinstance(c, Callback):
                raise MisconfigurationError(f"callbacks: {c!r} is not a torchplug.Callback")
        result = list(given)
        if checkpointing and not any(isinstance(c, cb.ModelCheckpoint) for c in given):
            result.append(cb.ModelCheckpoint())
        if not checkpointing and any(isinstance(c, cb.ModelCheckpoint) for c in given):
            raise MisconfigurationError(
                "`enable_checkpointing=False` but found `ModelCheckpoint` in callbacks; drop one of them"
            )
        if progress_bar and not any(isinstance(c, cb.ProgressBar) for c in given):
            result.append(cb.ProgressBar())
        if not progress_bar:
            result = [c for c in result if not isinstance(c, cb.ProgressBar)]
        if model_summary and not self.fast_dev_run and not any(isinstance(c, cb.ModelSummary) for c in given):
            result.append(cb.ModelSummary())
        # checkpoints last, so they see what every other callback did this step (Lightning's order)
        return [c for c in result if not isinstance(c, cb.ModelCheckpoint)] + [
            c for c in result if isinstance(c, cb.ModelCheckpoint)
        ]

    def _make_loggers(self, logger: Any) -> list[Any]:
        from torchplug.loggers import CSVLogger, Logger

        if logger is True:
            return [CSVLogger(self.default_root_dir)]
        if logger is False or logger is None:
            return []
        loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
        for item in loggers:
            if not isinstance(item, Logger):
                raise MisconfigurationError(f"logger={item!r}: expected True, False, a torchplug Logger or a list")
        return loggers

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

    @property
    def log_dir(self) -> str:
        directory = self.logger.log_dir if self.logger is not None else None
        return directory if directory is not None else self.default_root_dir

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
    def early_stopping_callback(self) -> Any:
        from torchplug.callbacks import EarlyStopping

        return next((c for c in self.callbacks if isinstance(c, EarlyStopping)), None)

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
    ) -> None:
        self._check_model(model, "fit")
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationError("fit(): pass either dataloaders or datamodule=, not both")
        self._launch("fit", model=model, loaders={"train": train_dataloaders, "val": val_dataloaders},
                     datamodule=datamodule, ckpt_path=ckpt_path)  # fmt: skip

    def validate(self, model: Module | None = None, dataloaders: Any = None, datamodule: DataModule | None = None,
                 ckpt_path: str | os.PathLike[str] | None = None, verbose: bool = True) -> list[dict[str, float]]:  # fmt: skip
        return self._evaluate("validate", model, dataloaders, datamodule, ckpt_path)

    def test(self, model: Module | None = None, dataloaders: Any = None, datamodule: DataModule | None = None,
             ckpt_path: str | os.PathLike[str] | None = None, verbose: bool = True) -> list[dict[str, float]]:  # fmt: skip
        return self._evaluate("test", model, dataloaders, datamodule, ckpt_path)

    def predict(self, model: Module | None = None, dataloaders: Any = None, datamodule: DataModule | None = None,
                ckpt_path: str | os.PathLike[str] | None = None) -> list[Any]:  # fmt: skip
        return self._evaluate("predict", model, dataloaders, datamodule, ckpt_path)

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, datamodule: Any, ckpt_path: Any) -> Any:
        model = model if model is not None else self.lightning_module
        if model is None:
            raise MisconfigurationError(f"{stage}(): pass a model (no model was fitted with this trainer)")
        self._check_model(model, stage)
        if datamodule is not None and dataloaders is not None:
            raise MisconfigurationError(f"{stage}(): pass either dataloaders or datamodule=, not both")
        return self._launch(stage, model=model, loaders={stage: dataloaders}, datamodule=datamodule,
                            ckpt_path=ckpt_path)  # fmt: skip

    @staticmethod
    def _check_model(model: Any, stage: str) -> None:
        if not isinstance(model, Module):
            raise MisconfigurationError(
                f"{stage}(model=...) expects a torchplug.Module (or LightningModule ported to torchplug), "
                f"got {type(model).__name__}"
            )

    def _launch(self, stage: str, **kwargs: Any) -> Any:
        self.stage = stage
        self.lightning_module = kwargs["model"]  # the caller's module, for strategies that return results to it
        try:
            result = self.hook.torchplug_launch(trainer=self, function=_Launch(self, stage, kwargs))
        except _stopping.Stopped:
            self.interrupted = True  # the stage's processes stopped on a signal (ddp_spawn's caller learns it here)
            raise
        if result is None:
            raise RuntimeError(f"strategy {self.strategy_name!r} answered torchplug_launch with None")
        return result[0]

    # ==================================================================================================== collectives
    def barrier(self, name: str = "") -> None:
        self.hook.torchplug_barrier(trainer=self, name=name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.hook.torchplug_broadcast(trainer=self, obj=obj, src=src)[0]

    def _log_to_loggers(self, metrics: dict[str, float], step: int) -> None:
        """Write to every logger on global rank 0 (callbacks such as LearningRateMonitor use this too)."""
        if self.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step)

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
