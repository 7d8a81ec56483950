"""The Trainer: flags in, backends selected by name, and a loop that reaches them only through hooks."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchplug import _legacy, _plugins, registry
from torchplug._devices import parse_devices
from torchplug._errors import MisconfigurationError
from torchplug._results import Results
from torchplug.callbacks._base import Callback
from torchplug.environments import ClusterEnvironment
from torchplug.module import DataModule, Module
from torchplug.precision import Precision
from torchplug.strategies import StepModule
from torchplug.strategies._step_module import _STEP_METHODS
from torchplug.utilities import move_data_to_device

log = logging.getLogger("torchplug")

_CHECKPOINT_FORMAT = 1


@dataclass
class LRSchedulerConfig:
    """One LR scheduler and when it steps (Lightning's ``lr_scheduler`` dict keys)."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None


class _Launch:
    """What ``torchplug_launch`` runs in every process: one stage of one trainer. Picklable for spawn."""

    def __init__(self, trainer: Trainer, stage: str, kwargs: dict[str, Any]) -> None:
        self.trainer, self.stage, self.kwargs = trainer, stage, kwargs

    def __call__(self) -> Any:
        return self.trainer._run_stage(self.stage, **self.kwargs)


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


def _has_override(obj: Any, name: str, base: type) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name, None)


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
        accelerator, strategy, devices = args["accelerator"], args["strategy"], args["devices"]
        num_nodes, precision = args["num_nodes"], args["precision"]

        # ---- flags ------------------------------------------------------------------------------------------
        _check_int("num_nodes", num_nodes, 1)
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

        self.max_epochs, self.min_epochs, self.max_steps, self.min_steps = max_epochs, min_epochs, max_steps, min_steps
        self.limit_train_batches, self.limit_val_batches = limit_train_batches, limit_val_batches
        self.limit_test_batches, self.limit_predict_batches = limit_test_batches, limit_predict_batches
        self.val_check_interval, self.check_val_every_n_epoch = val_check_interval, check_val_every_n_epoch
        self.num_sanity_val_steps, self.log_every_n_steps = num_sanity_val_steps, log_every_n_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = float(gradient_clip_val) if gradient_clip_val else None
        self.gradient_clip_algorithm = gradient_clip_algorithm
        if deterministic not in (True, False, "warn"):
            raise MisconfigurationError(f"deterministic={deterministic!r}: use True, False or 'warn'")
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
        self.num_nodes = num_nodes
        self.devices_arg = devices

        # ---- backends ----------------------------------------------------------------------------------------
        self.plugin_manager = _plugins.new_plugin_manager()
        self.hook = self.plugin_manager.hook
        used: set[str] = set()
        environment, extra = None, []
        for plugin in plugins if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else []):
            if isinstance(plugin, str):
                environment = _plugins.resolve("environment", plugin, backend_options, used)
            elif isinstance(plugin, ClusterEnvironment):
                environment = _plugins.resolve("environment", plugin, backend_options, used)
            elif isinstance(plugin, Precision):
                if str(precision) not in ("32-true", "32"):
                    raise MisconfigurationError(
                        f"precision={precision!r} and plugins=[{type(plugin).__name__}(...)] both set the precision"
                    )
                precision = plugin
            else:
                extra.append(plugin)

        if accelerator == "auto":
            self.accelerator_name, cls = _plugins.auto_accelerator()
            self.accelerator = _plugins.instantiate("accelerator", cls, self.accelerator_name, backend_options, used)
        else:
            self.accelerator_name, self.accelerator = _plugins.resolve("accelerator", accelerator, backend_options, used)
        self.plugin_manager.register(self.accelerator, name=f"accelerator:{self.accelerator_name}")
        device_count = self.hook.torchplug_device_count(trainer=self)
        typed = accelerator if isinstance(accelerator, str) and accelerator != "auto" else self.accelerator_name
        self.device_ids = parse_devices(devices, device_count, typed)

        if strategy == "auto":
            strategy = self.hook.torchplug_default_strategy(trainer=self) or "auto"
        if strategy == "auto":
            if len(self.device_ids) == 1 and num_nodes == 1:
                strategy = "single_device"
            elif any("ddp" in b.names for b in registry.discover("strategy")):
                strategy = "ddp"
            else:
                raise MisconfigurationError(
                    f"devices={devices!r}, num_nodes={num_nodes} needs a multi-process strategy and none is installed: "
                    "pip install torchplug-ddp (then strategy='ddp' is picked), or use devices=1"
                )
        self.strategy_name, self.strategy = _plugins.resolve("strategy", strategy, backend_options, used)
        if isinstance(precision, (str, int)) and not isinstance(precision, bool):
            precision = self.hook.torchplug_precision_name(
                trainer=self, precision=registry.normalize_name(precision)
            ) or precision
        self.precision_name, self.precision_plugin = _plugins.resolve("precision", precision, backend_options, used)
        self.plugin_manager.register(self.strategy, name=f"strategy:{self.strategy_name}")
        self.num_processes = self.hook.torchplug_num_processes(trainer=self)
        # A cluster environment only matters to a job of several processes; only then are environments imported.
        if environment is None and self.num_processes * num_nodes > 1:
            environment = _plugins.detect_environment(backend_options, used)
        self.environment_name, self.environment = environment if environment is not None else (None, None)
        if self.environment is not None:
            self.plugin_manager.register(self.environment, name=f"environment:{self.environment_name}")
        self.plugin_manager.register(self.precision_plugin, name=f"precision:{self.precision_name}")
        for i, plugin in enumerate(extra):
            self.plugin_manager.register(plugin, name=f"plugin:{i}:{type(plugin).__name__}")

        unknown = sorted(set(backend_options) - used)
        if unknown:
            raise MisconfigurationError(
                f"Trainer got unexpected keyword argument(s) {', '.join(unknown)}: no selected backend takes them "
                f"(accelerator {self.accelerator_name!r}, strategy {self.strategy_name!r}, precision "
                f"{self.precision_name!r}). Check the spelling, or select the backend that has this option."
            )

        self.world_size = self.num_processes * num_nodes
        self.global_rank = self.local_rank = self.node_rank = 0
        self.root_device: torch.device | None = None
        self.hook.torchplug_configure(trainer=self)

        # ---- callbacks and loggers -------------------------------------------------------------------------------
        self.callbacks: list[Callback] = self._default_callbacks(
            callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary
        )
        self.enable_progress_bar, self.enable_checkpointing = enable_progress_bar, enable_checkpointing
        self.loggers = self._make_loggers(logger)

        # ---- run state ---------------------------------------------------------------------------------------------
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
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
        self._optimizer_handles: list[_OptimizerHandle] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._results: Results | None = None
        self._wrapped_module: nn.Module | None = None
        self._batches_done = 0
        self._total_batches = 0
        self._validated_at = -1
        self._epoch_phase = "train"
        self._epoch_start_rng: dict[str, Any] | None = None
        self._restored: dict[str, Any] | None = None
        self.ckpt_path: str | None = None
        self._header_shown = False

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
                "enable_checkpointing=False but callbacks holds a ModelCheckpoint; drop one of them"
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
        # A spawned process rebuilds the trainer (and its plugin manager) from the constructor arguments.
        return {"_init_args": self._init_args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["_init_args"])  # type: ignore[misc]

    # ==================================================================================================== properties
    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def precision(self) -> str:
        """The precision's name, as in Lightning (``"32-true"``); the plugin is ``precision_plugin``."""
        return self.precision_name

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
        return self._wrapped_module if self._wrapped_module is not None else self.lightning_module

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
        result = self.hook.torchplug_launch(trainer=self, function=_Launch(self, stage, kwargs))
        if result is None:
            raise RuntimeError(f"strategy {self.strategy_name!r} answered torchplug_launch with None")
        return result[0]

    # ==================================================================================================== one process
    def _run_stage(self, stage: str, model: Module, loaders: dict[str, Any], datamodule: Any, ckpt_path: Any) -> Any:
        self.stage = stage
        self.lightning_module, self.datamodule = model, datamodule
        model.trainer = self
        self.ckpt_path, self._restored = None, None
        if datamodule is not None:
            datamodule.trainer = self
        status = "failed"
        try:
            self._setup_process()  # inside: a half-made process group is still torn down
            self._agree_on_log_versions()
            self._prepare_data(model, datamodule)
            self._call("setup", stage=stage)
            self._setup_module(model, stage)
            if ckpt_path is not None:
                self._restore(self._resolve_ckpt_path(ckpt_path), stage)
            if stage == "fit":
                result = self._run_fit(loaders)
            elif stage == "predict":
                result = self._run_predict(loaders["predict"])
            else:
                result = self._run_evaluation(stage, loaders[stage])
            status = "success"
            return result
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                status = "interrupted"
            self._callbacks("on_exception", exc)
            raise
        finally:
            if self.is_global_zero:
                for logger in self.loggers:
                    logger.finalize(status)
            with contextlib.suppress(Exception):
                self._call("teardown", stage=stage)
            # Release the strategy's wrapper (DistributedDataParallel) before the process group goes: a wrapper
            # that outlives it is destroyed at interpreter exit, when gloo's threads may already be gone.
            self._wrapped_module, self._hot = None, None
            self._optimizer_handles = []
            self.hook.torchplug_teardown(trainer=self)
            self.training = False

    def _setup_process(self) -> None:
        self.hook.torchplug_setup_environment(trainer=self)
        world = self.hook.torchplug_world(trainer=self)
        self.global_rank, self.local_rank = world.global_rank, world.local_rank
        self.node_rank, self.world_size = world.node_rank, world.world_size
        self.root_device = self.hook.torchplug_root_device(trainer=self)
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.deterministic == "warn")
        if self.benchmark is not None:
            torch.backends.cudnn.benchmark = self.benchmark
        if self.is_global_zero and not self._header_shown:
            self._header_shown = True
            log.info(
                "torchplug: accelerator=%s strategy=%s precision=%s devices=%s num_nodes=%s world_size=%s%s",
                self.accelerator_name, self.strategy_name, self.precision_name, self.device_ids, self.num_nodes,
                self.world_size, f" environment={self.environment_name}" if self.environment_name else "",
            )  # fmt: skip

    def _agree_on_log_versions(self) -> None:
        """Every rank uses rank 0's ``version_N``, so ``trainer.log_dir`` is the same folder everywhere."""
        from torchplug.loggers._base import FolderLogger

        if self.world_size == 1:
            return
        for logger in self.loggers:
            if isinstance(logger, FolderLogger) and logger._version is None:
                logger._version = self.broadcast(logger.version if self.is_global_zero else None)

    def _prepare_data(self, model: Module, datamodule: DataModule | None) -> None:
        if self.local_rank == 0:
            if datamodule is not None:
                datamodule.prepare_data()
            model.prepare_data()
        self.barrier("prepare_data")

    def _setup_module(self, model: Module, stage: str) -> None:
        model.to(self.root_device)
        converted = self.hook.torchplug_convert_module(trainer=self, module=model)
        if converted is not model:
            raise MisconfigurationError(
                f"precision {self.precision_name!r} replaced the module in torchplug_convert_module; convert it in place"
            )
        self.optimizers, self.lr_scheduler_configs = [], []
        if stage == "fit":
            optimizers, self.lr_scheduler_configs = self._configure_optimizers(model)
            answer = self.hook.torchplug_setup_optimizers(trainer=self, module=model, optimizers=optimizers)
            model_after, optimizers_after = answer
            if model_after is not model:
                raise MisconfigurationError(
                    f"precision {self.precision_name!r} replaced the module in torchplug_setup_optimizers; change it "
                    "in place and return the same object"
                )
            for old, new in zip(optimizers, optimizers_after):
                if new is not old:
                    for config in self.lr_scheduler_configs:
                        if getattr(config.scheduler, "optimizer", None) is old:
                            config.scheduler.optimizer = new
            self.optimizers = list(optimizers_after)
            if model.automatic_optimization and len(self.optimizers) > 1:
                raise MisconfigurationError(
                    f"configure_optimizers returned {len(self.optimizers)} optimizers; automatic optimization takes "
                    "one. Set self.automatic_optimization = False and step them in training_step"
                )
        self._optimizer_handles = [_OptimizerHandle(self, opt) for opt in self.optimizers]
        step_module = StepModule(model)
        wrapped = self.hook.torchplug_wrap_module(trainer=self, module=step_module)
        self._wrapped_module = wrapped

    def _configure_optimizers(self, model: Module) -> tuple[list[Any], list[LRSchedulerConfig]]:
        returned = model.configure_optimizers()
        optimizers: list[Any]
        schedulers: list[Any] = []
        what = f"{type(model).__name__}.configure_optimizers() returned {returned!r}"
        if isinstance(returned, torch.optim.Optimizer):
            optimizers = [returned]
        elif isinstance(returned, dict):
            if "optimizer" not in returned:
                raise MisconfigurationError(f"{what}: a dict needs an 'optimizer' key")
            optimizers = [returned["optimizer"]]
            if returned.get("lr_scheduler") is not None:
                schedulers = [returned["lr_scheduler"]]
        elif isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[0], (list, tuple)):
            optimizers = list(returned[0])
            schedulers = list(returned[1]) if isinstance(returned[1], (list, tuple)) else [returned[1]]
        elif isinstance(returned, (list, tuple)) and all(isinstance(o, dict) for o in returned):
            optimizers = [d["optimizer"] for d in returned]
            schedulers = [d["lr_scheduler"] for d in returned if d.get("lr_scheduler") is not None]
        elif isinstance(returned, (list, tuple)):
            optimizers = list(returned)
        else:
            raise MisconfigurationError(
                f"{what}: return an optimizer, a list of them, (optimizers, schedulers), or a dict with 'optimizer' "
                "and optionally 'lr_scheduler'"
            )
        for opt in optimizers:
            if not isinstance(opt, torch.optim.Optimizer):
                raise MisconfigurationError(f"{what}: {opt!r} is not a torch.optim.Optimizer")
        configs = []
        for item in schedulers:
            if isinstance(item, dict):
                if "scheduler" not in item:
                    raise MisconfigurationError(f"{what}: an lr_scheduler dict needs a 'scheduler' key")
                unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "strict", "name"}
                if unknown:
                    raise MisconfigurationError(f"{what}: unknown lr_scheduler keys {sorted(unknown)}")
                config = LRSchedulerConfig(**item)
            else:
                config = LRSchedulerConfig(scheduler=item)
            if config.interval not in ("step", "epoch"):
                raise MisconfigurationError(f"{what}: lr_scheduler interval {config.interval!r}; use 'step' or 'epoch'")
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and config.monitor is None:
                raise MisconfigurationError(f"{what}: ReduceLROnPlateau needs a 'monitor' key naming a logged metric")
            configs.append(config)
        return optimizers, configs

    # ==================================================================================================== dataloaders
    def _dataloaders(self, kind: str, given: Any, stage: str) -> list[Any]:
        source = given
        if source is None and self.datamodule is not None:
            source = getattr(self.datamodule, f"{kind}_dataloader")()
        if source is None:
            source = getattr(self.lightning_module, f"{kind}_dataloader")()
        if source is None:
            return []
        loaders = list(source) if isinstance(source, (list, tuple)) else [source]
        return [self.hook.torchplug_setup_dataloader(trainer=self, dataloader=dl, stage=stage) for dl in loaders]

    @staticmethod
    def _num_batches(loader: Any, limit: int | float, flag: str) -> int | float:
        try:
            length: int | float = len(loader)
        except TypeError:
            length = math.inf
        if isinstance(limit, int):
            return min(length, limit)
        if length == math.inf:
            if limit not in (0.0, 1.0):
                raise MisconfigurationError(
                    f"{flag}={limit!r}: a fraction needs a dataloader with a length; use an int number of batches"
                )
            return 0 if limit == 0.0 else math.inf
        return int(length * limit)

    # ==================================================================================================== fit
    def _run_fit(self, loaders: dict[str, Any]) -> None:
        module = self.lightning_module
        assert module is not None
        train_loaders = self._dataloaders("train", loaders["train"], "fit")
        if not train_loaders:
            raise MisconfigurationError(
                "fit(): no training data; pass train_dataloaders=, a datamodule, or implement train_dataloader()"
            )
        if len(train_loaders) > 1:
            raise MisconfigurationError("fit(): train_dataloaders takes one dataloader")
        train_loader = train_loaders[0]
        val_loaders = self._dataloaders("val", loaders["val"], "validate")
        has_val_step = _has_override(module, "validation_step", Module)
        if not has_val_step:
            val_loaders = []
        self.num_training_batches = self._num_batches(train_loader, self.limit_train_batches, "limit_train_batches")
        counts = [self._num_batches(dl, self.limit_val_batches, "limit_val_batches") for dl in val_loaders]
        # A loader limited to 0 batches is no validation at all: no sanity check, no validation hooks.
        val_loaders = [dl for dl, count in zip(val_loaders, counts) if count]
        self.num_val_batches = [count for count in counts if count]
        self._val_check_batch = self._resolve_val_check_batch()
        self._train_loader, self._val_loaders = train_loader, val_loaders
        if not module.automatic_optimization:
            for flag, value in (("accumulate_grad_batches", self.accumulate_grad_batches != 1),
                                ("gradient_clip_val", self.gradient_clip_val)):  # fmt: skip
                if value:
                    raise MisconfigurationError(
                        f"{flag} is not applied with manual optimization (self.automatic_optimization = False): "
                        "accumulate or clip in training_step (self.clip_gradients(opt, ...)), and leave the flag unset"
                    )

        self._prepare_call_lists()
        if self.is_global_zero:
            for logger in self.loggers:
                logger.log_hyperparams(dict(module.hparams))
        self._call("on_fit_start")
        if self.num_sanity_val_steps and val_loaders:
            self._sanity_check()
        if self._restored is not None:
            _set_rng_states(self._restored["rng_states"])
            self.callback_metrics.update(self._restored["callback_metrics"])  # the sanity check cleared them
        self._results = Results(self, default_on_step=True)
        self.training = True
        module.train()
        self._call("on_train_start")
        try:
            while self.num_training_batches and not self._fit_done():  # limit_train_batches=0: no training
                self._train_epoch()
        finally:
            self.training = False
        self._call("on_train_end")
        self._call("on_fit_end")

    def _fit_done(self) -> bool:
        if self.max_steps != -1 and self.global_step >= self.max_steps:
            return True
        if self.max_epochs != -1 and self.current_epoch >= self.max_epochs:
            return True
        return self.should_stop and self._min_reached()

    def _min_reached(self) -> bool:
        epochs_ok = self.min_epochs is None or self.current_epoch >= self.min_epochs
        steps_ok = self.min_steps is None or self.global_step >= self.min_steps
        return epochs_ok and steps_ok

    def _resolve_val_check_batch(self) -> int | float:
        interval, n = self.val_check_interval, self.num_training_batches
        if isinstance(interval, float):
            if n == math.inf:
                if interval != 1.0:
                    raise MisconfigurationError(
                        f"val_check_interval={interval!r}: a fraction needs a training dataloader with a length"
                    )
                return math.inf
            return max(1, int(n * interval))
        if self.check_val_every_n_epoch is not None and n != math.inf and interval > n:
            raise MisconfigurationError(
                f"val_check_interval={interval} is longer than the training epoch ({n} batches); use at most {n}, "
                "a float fraction, or check_val_every_n_epoch=None to count batches across epochs"
            )
        return interval

    def _sanity_check(self) -> None:
        steps = self.num_sanity_val_steps
        self.num_sanity_val_batches = [b if steps == -1 else min(steps, b) for b in self.num_val_batches]
        self.sanity_checking = True
        self._callbacks("on_sanity_check_start")
        try:
            self._eval_loop("validate", self._val_loaders, self.num_sanity_val_batches, log_to_loggers=False)
        finally:
            self.sanity_checking = False
        self._callbacks("on_sanity_check_end")
        self.callback_metrics.clear()
        self.progress_bar_metrics.clear()

    def _train_epoch(self) -> None:
        """One training epoch, or what a checkpoint left of it.

        ``_epoch_phase`` records how far the epoch got, for checkpoints: ``"train"`` (``_batches_done`` batches
        trained, with their validations), ``"validated"`` (every batch done; the epoch-end hooks are running) and
        ``"complete"`` (LR schedulers stepped; only the metric-monitoring callbacks remain).
        """
        loops, self._restored = (self._restored["loops"] if self._restored else None), None
        phase = loops["phase"] if loops else "train"
        resume_at = loops["batches_done"] if loops and phase == "train" else 0
        if resume_at:
            self._epoch_start_rng = loops["epoch_start_rng"]
            _set_rng_states(self._epoch_start_rng)  # the data order of the interrupted epoch
        else:
            self._epoch_start_rng = _get_rng_states()
        self._batches_done, self._epoch_phase = resume_at, phase
        self.hook.torchplug_on_train_epoch_start(trainer=self, epoch=self.current_epoch)
        self._call("on_train_epoch_start")
        if phase == "train":
            self._train_batches(resume_at, loops["save_time_rng"] if resume_at else None)
            self._epoch_phase = "validated"
        # Lightning's order: callbacks, then the module (whose epoch-end logs count for this epoch), then the LR
        # schedulers (ReduceLROnPlateau may monitor those logs), then callbacks that monitor metrics (checkpoints,
        # early stopping), which so see the whole epoch and a checkpoint holds the stepped schedulers.
        results = self._results
        results.dataloader_idx = None
        results.default_on_step = False  # self.log in epoch-end hooks is per epoch
        epoch_logs = results.epoch_end()
        self._callbacks("on_train_epoch_end", monitors=False)
        self.lightning_module.on_train_epoch_end()
        results.default_on_step = True
        epoch_logs.update(results.epoch_end())
        self._step_schedulers("epoch")
        self._epoch_phase = "complete"
        self._callbacks("on_train_epoch_end", monitors=True)
        self._flush_step_logs(epoch_metrics=epoch_logs)
        self.current_epoch += 1
        self._batches_done, self._epoch_phase = 0, "train"

    def _train_batches(self, resume_at: int, save_time_rng: dict[str, Any] | None) -> None:
        module = self.lightning_module
        n = self.num_training_batches
        if n == math.inf:  # no length: read one batch ahead to know which is last
            batches: Iterator[tuple[Any, bool]] = _with_last(iter(self._train_loader))
        else:
            batches = _with_index_last(itertools.islice(iter(self._train_loader), int(n)), int(n) - 1)
        check_val = bool(self._val_loaders)
        if resume_at:  # replay the epoch's data order up to where the checkpoint was taken
            for _ in itertools.islice(batches, resume_at):
                pass
            _set_rng_states(save_time_rng)
            # A checkpoint from on_train_batch_end precedes that batch's validation: run it if it was due.
            if check_val and self._validated_at != self._total_batches and self._val_due(resume_at - 1, resume_at == n):
                self._run_validation()
        run_batch = self._train_batch_automatic if module.automatic_optimization else self._train_batch_manual
        prepare, on_batch_end = self._hot.prepare_batch, self._hot.on_batch_end
        wants_start = bool(self._cb_lists["on_train_batch_start"]) or self._module_overrides["on_train_batch_start"]
        wants_end = self._wants_batch_end
        max_steps, log_every = self.max_steps, self.log_every_n_steps
        for batch_idx, (batch, is_last) in enumerate(batches, start=resume_at):
            batch = prepare(batch)
            if wants_start and self._batch_start(batch, batch_idx) == -1:
                break
            output = run_batch(batch, batch_idx, is_last)
            if on_batch_end is not _noop:
                on_batch_end(trainer=self, stage="train", batch_idx=batch_idx)
            self._batches_done = batch_idx + 1
            self._total_batches += 1
            if wants_end:
                self._call_batch_end("on_train_batch_end", _detached_output(output), batch, batch_idx)
            step = self.global_step
            if step % log_every == 0 and step != self._last_logged_step:
                self._flush_step_logs()
            if check_val and self._val_due(batch_idx, is_last):
                self._run_validation()
            if (max_steps != -1 and step >= max_steps) or (self.should_stop and self._min_reached()):
                break

    def _val_due(self, batch_idx: int, is_last: bool) -> bool:
        """Lightning's schedule: after every ``val_check_batch``-th batch (1.0 means the epoch's last batch) of the
        epochs ``check_val_every_n_epoch`` selects; with ``check_val_every_n_epoch=None`` counted across epochs."""
        every = self._val_check_batch
        if self.check_val_every_n_epoch is None:
            return every != math.inf and self._total_batches % every == 0
        if (self.current_epoch + 1) % self.check_val_every_n_epoch:
            return False
        return is_last if every == math.inf else (batch_idx + 1) % every == 0

    def _batch_start(self, batch: Any, batch_idx: int) -> Any:
        for callback in self._cb_lists["on_train_batch_start"]:
            callback.on_train_batch_start(self, self.lightning_module, batch, batch_idx)
        if self._module_overrides["on_train_batch_start"]:
            return self.lightning_module.on_train_batch_start(batch, batch_idx)
        return None

    # ---------------------------------------------------------------------------------------------------- the step
    def _train_batch_automatic(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        accumulate = self.accumulate_grad_batches
        if accumulate > 1 and not is_last and (batch_idx + 1) % accumulate:
            context = self._hot.no_sync(trainer=self)
            with context if context is not None else contextlib.nullcontext():
                return self._forward_backward(batch, batch_idx, None)
        closure = self._closure
        closure.batch, closure.batch_idx, closure.calls = batch, batch_idx, 0
        optimizer = closure.optimizer
        took = self._hot.optimizer_step(trainer=self, optimizer=optimizer, closure=closure)
        if not closure.calls:
            raise RuntimeError(
                f"the optimizer step hook of {self._step_answerer()} did not call the closure; the batch was not trained"
            )
        self.global_step += 1
        if took and self._has_step_schedulers:
            self._step_schedulers("step")
        self._zero_grad(optimizer)
        return closure.output

    def _step_answerer(self) -> str:
        impls = self.hook.torchplug_optimizer_step.get_hookimpls()
        return ", ".join(self.plugin_manager.get_name(i.plugin) or "?" for i in impls)

    def _forward_backward(self, batch: Any, batch_idx: int, optimizer: Any) -> Any:
        hot = self._hot
        output = hot.forward(trainer=self, stage="train", args=(batch, batch_idx))
        if hot.step_output is not _identity_step_output:
            output = hot.step_output(trainer=self, stage="train", output=output)
        if output is None:
            return None
        if isinstance(output, torch.Tensor):
            loss = output
        elif isinstance(output, dict) and "loss" in output:
            loss = output["loss"]
        else:
            raise MisconfigurationError(
                f"training_step returned {type(output).__name__}; return the loss tensor, a dict with a 'loss' key, "
                "or None to skip the batch"
            )
        if self.accumulate_grad_batches > 1:
            loss = loss / self.accumulate_grad_batches
        if self._quiet_backward:
            hot.backward(trainer=self, loss=loss, optimizer=optimizer)
        else:
            self._backward(loss, optimizer)
        return output

    def _backward(self, loss: torch.Tensor, optimizer: Any) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # the real optimizer behind self.optimizers()
        module = self.lightning_module
        if self._module_overrides["on_before_backward"]:
            module.on_before_backward(loss)
        for callback in self._cb_lists["on_before_backward"]:
            callback.on_before_backward(self, module, loss)
        self._hot.backward(trainer=self, loss=loss, optimizer=optimizer)
        if self._module_overrides["on_after_backward"]:
            module.on_after_backward()
        for callback in self._cb_lists["on_after_backward"]:
            callback.on_after_backward(self, module)

    def _before_optimizer_step(self, optimizer: Any, clip: bool) -> None:
        """Between the last backward and the step: reduce, unscale, hooks, clipping (inside the closure)."""
        if self._quiet_pre_step:
            return
        self._hot.reduce_gradients(trainer=self, optimizer=optimizer)
        self._hot.unscale_gradients(trainer=self, optimizer=optimizer)
        module = self.lightning_module
        if self._module_overrides["on_before_optimizer_step"]:
            module.on_before_optimizer_step(optimizer)
        for callback in self._cb_lists["on_before_optimizer_step"]:
            callback.on_before_optimizer_step(self, module, optimizer)
        if clip and self.gradient_clip_val:
            self._clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    def _clip_gradients(self, optimizer: Any, value: float, algorithm: str) -> None:
        if algorithm not in ("norm", "value"):  # self.clip_gradients(...) arrives here unchecked
            raise MisconfigurationError(f"gradient_clip_algorithm={algorithm!r}: use 'norm' or 'value'")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # the real optimizer behind self.optimizers()
        self.hook.torchplug_clip_gradients(trainer=self, optimizer=optimizer, clip_val=value, algorithm=algorithm)

    def _zero_grad(self, optimizer: Any) -> None:
        if self._quiet_zero_grad:
            optimizer.zero_grad(set_to_none=True)
            return
        module = self.lightning_module
        if self._module_overrides["on_before_zero_grad"]:
            module.on_before_zero_grad(optimizer)
        for callback in self._cb_lists["on_before_zero_grad"]:
            callback.on_before_zero_grad(self, module, optimizer)
        optimizer.zero_grad(set_to_none=True)

    def _train_batch_manual(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        output = self._hot.forward(trainer=self, stage="train", args=(batch, batch_idx))
        return self._hot.step_output(trainer=self, stage="train", output=output)

    def _step_schedulers(self, interval: str) -> None:
        if not self.lightning_module.automatic_optimization:
            return
        for config in self.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = self.global_step if interval == "step" else self.current_epoch + 1
            if count % config.frequency:
                continue
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                value = self.callback_metrics.get(config.monitor)
                if value is None:
                    if config.strict:
                        raise MisconfigurationError(
                            f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; logged: "
                            f"{sorted(self.callback_metrics) or 'nothing'}. Log it, or set 'strict': False"
                        )
                    continue
                scheduler.step(float(value))
            else:
                scheduler.step()

    # ---------------------------------------------------------------------------------------------------- logging
    def _flush_step_logs(self, epoch_metrics: dict[str, torch.Tensor] | None = None) -> None:
        """Write the latest per-step values (at the interval) or the epoch aggregates (at epoch end)."""
        results = self._results
        if epoch_metrics is None:
            self._last_logged_step = self.global_step
            metrics = results.pop_step_metrics() if results is not None else {}
        else:
            metrics = dict(epoch_metrics)
        for answer in self.hook.torchplug_metrics(trainer=self):
            if answer:
                metrics.update(answer)
        if not metrics:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self.logged_metrics.update(values)
        self._write_logs(values)

    def _write_logs(self, values: dict[str, float]) -> None:
        """Values read at a logging point, with the epoch, to the loggers (global rank 0 only)."""
        if values and self.is_global_zero and self.loggers:
            self._log_to_loggers({**values, "epoch": float(self.current_epoch)}, max(self.global_step - 1, 0))

    def _log_to_loggers(self, metrics: dict[str, float], step: int) -> None:
        """Write to every logger on global rank 0 (callbacks such as LearningRateMonitor use this too)."""
        if self.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step)

    def _all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return self.hook.torchplug_all_reduce(trainer=self, tensor=tensor, op=op)

    # ==================================================================================================== evaluation
    def _run_validation(self) -> None:
        self._validated_at = self._total_batches  # before the hooks, so a checkpoint taken in them records it
        module = self.lightning_module
        train_results = self._results
        self._eval_loop("validate", self._val_loaders, self.num_val_batches, log_to_loggers=True)
        self._results = train_results
        self._results.dataloader_idx = None
        module.train()

    def _run_evaluation(self, stage: str, given: Any) -> list[dict[str, float]]:
        kind = "val" if stage == "validate" else "test"
        loaders = self._dataloaders(kind, given, stage)
        if not loaders:
            raise MisconfigurationError(
                f"{stage}(): no {kind} data; pass dataloaders=, a datamodule, or implement {kind}_dataloader()"
            )
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
        counts = [self._num_batches(dl, limit, f"limit_{kind}_batches") for dl in loaders]
        if stage == "validate":
            self.num_val_batches = counts
        else:
            self.num_test_batches = counts
        self._prepare_call_lists()
        self.callback_metrics.clear()
        self.progress_bar_metrics.clear()
        return self._eval_loop(stage, loaders, counts, log_to_loggers=True)

    def _eval_loop(
        self, stage: str, loaders: list[Any], counts: list[int | float], log_to_loggers: bool
    ) -> list[dict[str, float]]:
        module = self.lightning_module
        name = "validation" if stage == "validate" else "test"
        self._results = results = Results(self, default_on_step=False)
        was_training = module.training
        module.eval()
        self._call(f"on_{name}_start")
        self._call(f"on_{name}_epoch_start")
        per_loader: list[dict[str, torch.Tensor]] = []
        prepare = self._hot.prepare_batch
        with torch.no_grad():
            for dl_idx, (loader, count) in enumerate(zip(loaders, counts)):
                results.dataloader_idx = dl_idx if len(loaders) > 1 else None
                before = set(results.metrics)
                limit = None if count == math.inf else int(count)
                for batch_idx, batch in enumerate(itertools.islice(iter(loader), limit)):
                    batch = prepare(batch)
                    extra = (dl_idx,) if len(loaders) > 1 else ()
                    self._call_batch(f"on_{name}_batch_start", batch, batch_idx, *extra)
                    output = self._hot.forward(trainer=self, stage=name, args=(batch, batch_idx, *extra))
                    output = self._hot.step_output(trainer=self, stage=name, output=output)
                    self._hot.on_batch_end(trainer=self, stage=name, batch_idx=batch_idx)
                    self._call_batch_end(f"on_{name}_batch_end", output, batch, batch_idx, *extra)
                per_loader.append({k for k in results.metrics if k not in before})  # type: ignore[arg-type]
        results.dataloader_idx = None
        self._call(f"on_{name}_epoch_end")
        logged = results.epoch_end()
        if log_to_loggers and not self.sanity_checking:
            values = {k: float(v) for k, v in logged.items()}
            self.logged_metrics.update(values)
            self._write_logs(values)
        self._call(f"on_{name}_end")
        if was_training:
            module.train()
        out = []
        for keys in per_loader:
            out.append({k: float(self.callback_metrics[k]) for k in sorted(keys) if k in self.callback_metrics})
        if len(loaders) > 1:  # metrics logged outside the per-loader steps (epoch-end hooks) go to every loader
            shared = {k: float(v) for k, v in logged.items() if "/dataloader_idx_" not in k}
            for item in out:
                item.update({k: v for k, v in shared.items() if k not in item})
        elif out:
            out[0].update({k: float(v) for k, v in logged.items()})
        return out

    def _run_predict(self, given: Any) -> list[Any]:
        loaders = self._dataloaders("predict", given, "predict")
        if not loaders:
            raise MisconfigurationError(
                "predict(): no data; pass dataloaders=, a datamodule, or implement predict_dataloader()"
            )
        counts = [self._num_batches(dl, self.limit_predict_batches, "limit_predict_batches") for dl in loaders]
        self.num_predict_batches = counts
        self._prepare_call_lists()
        self.progress_bar_metrics.clear()
        module = self.lightning_module
        module.eval()
        self._results = Results(self, default_on_step=False)
        self._call("on_predict_start")
        self._call("on_predict_epoch_start")
        all_outputs: list[list[Any]] = []
        prepare = self._hot.prepare_batch
        with torch.no_grad():
            for dl_idx, (loader, count) in enumerate(zip(loaders, counts)):
                outputs = []
                limit = None if count == math.inf else int(count)
                for batch_idx, batch in enumerate(itertools.islice(iter(loader), limit)):
                    batch = prepare(batch)
                    extra = (dl_idx,) if len(loaders) > 1 else ()
                    self._call_batch("on_predict_batch_start", batch, batch_idx, *extra)
                    output = self._hot.forward(trainer=self, stage="predict", args=(batch, batch_idx, *extra))
                    output = self._hot.step_output(trainer=self, stage="predict", output=output)
                    self._hot.on_batch_end(trainer=self, stage="predict", batch_idx=batch_idx)
                    self._call_batch_end("on_predict_batch_end", output, batch, batch_idx, *extra)
                    outputs.append(output)
                all_outputs.append(outputs)
        self._call("on_predict_epoch_end")
        self._call("on_predict_end")
        return all_outputs[0] if len(all_outputs) == 1 else all_outputs

    # ==================================================================================================== hook calls
    def _prepare_call_lists(self) -> None:
        """Which callbacks and module hooks are overridden, and direct callers for the hot hooks."""
        names = [n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")]
        self._cb_lists = {n: [c for c in self.callbacks if _has_override(c, n, Callback)] for n in names}
        module = self.lightning_module
        self._module_overrides = {
            n: _has_override(module, n, Module) for n in dir(Module) if n.startswith("on_") or n in ("setup", "teardown")
        }
        self._wants_batch_end = bool(self._cb_lists["on_train_batch_end"]) or self._module_overrides["on_train_batch_end"]
        self._last_logged_step = self.global_step
        self._hot = hot = _HotHooks(self)

        def quiet(*names: str) -> bool:
            return not any(self._cb_lists[n] or self._module_overrides[n] for n in names)

        # Per-step work that nothing asked for is skipped outright (see benchmarks/overhead.py).
        self._quiet_backward = quiet("on_before_backward", "on_after_backward")
        self._quiet_zero_grad = quiet("on_before_zero_grad")
        self._quiet_pre_step = (
            quiet("on_before_optimizer_step")
            and not self.gradient_clip_val
            and hot.reduce_gradients is _noop
            and hot.unscale_gradients is _noop
        )
        self._closure = _Closure(self, None, 0, self.optimizers[0] if self.optimizers else None)
        self._has_step_schedulers = any(config.interval == "step" for config in self.lr_scheduler_configs)

    def _call(self, name: str, **kwargs: Any) -> None:
        """Call a no-batch hook on the callbacks, the datamodule (setup/teardown) and the module."""
        module = self.lightning_module
        for callback in self.callbacks:
            if _has_override(callback, name, Callback):
                getattr(callback, name)(self, module, *kwargs.values())
        if name in ("setup", "teardown") and self.datamodule is not None:
            getattr(self.datamodule, name)(**kwargs)
        method = getattr(module, name, None)
        if method is not None:
            method(**kwargs)

    def _callbacks(self, name: str, *args: Any, monitors: bool | None = None) -> None:
        """Call a hook on the callbacks that override it; ``monitors`` picks only those that do (not) monitor."""
        for callback in self.callbacks:
            if monitors is not None and callback.monitors_metrics != monitors:
                continue
            if _has_override(callback, name, Callback):
                getattr(callback, name)(self, self.lightning_module, *args)

    def _call_batch(self, name: str, batch: Any, batch_idx: int, *extra: Any) -> None:
        module = self.lightning_module
        for callback in self._cb_lists.get(name, ()):
            getattr(callback, name)(self, module, batch, batch_idx, *extra)
        if self._module_overrides.get(name):
            getattr(module, name)(batch, batch_idx, *extra)

    def _call_batch_end(self, name: str, output: Any, batch: Any, batch_idx: int, *extra: Any) -> None:
        module = self.lightning_module
        for callback in self._cb_lists.get(name, ()):
            getattr(callback, name)(self, module, output, batch, batch_idx, *extra)
        if self._module_overrides.get(name):
            getattr(module, name)(output, batch, batch_idx, *extra)

    # ==================================================================================================== collectives
    def barrier(self, name: str = "") -> None:
        self.hook.torchplug_barrier(trainer=self, name=name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.hook.torchplug_broadcast(trainer=self, obj=obj, src=src)[0]

    # ==================================================================================================== checkpoints
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Write a checkpoint of the whole run (global rank 0 writes; every rank must call this)."""
        from torchplug._checkpoint import atomic_save

        checkpoint = self._dump_checkpoint(weights_only)
        if self.is_global_zero:
            atomic_save(checkpoint, filepath)
        self.barrier("save_checkpoint")

    def _dump_checkpoint(self, weights_only: bool) -> dict[str, Any]:
        module = self.lightning_module
        if module is None:
            raise RuntimeError("save_checkpoint() needs a model: call it during or after fit()")
        checkpoint: dict[str, Any] = {
            "torchplug_checkpoint": _CHECKPOINT_FORMAT,
            "torchplug_version": _version(),
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "state_dict": module.state_dict(),
            "hyper_parameters": _safe_hparams(module.hparams),
            "backends": {"accelerator": self.accelerator_name, "strategy": self.strategy_name,
                         "precision": self.precision_name},  # fmt: skip
        }
        if not weights_only:
            save_time_rng = _get_rng_states()
            mid_epoch = self._epoch_phase == "train" and self._batches_done > 0
            checkpoint["loops"] = {
                "phase": self._epoch_phase,
                "batches_done": self._batches_done,
                "total_batches": self._total_batches,
                "validated_at": self._validated_at,
                "epoch_start_rng": self._epoch_start_rng if mid_epoch else None,
                "save_time_rng": save_time_rng,
            }
            checkpoint["callback_metrics"] = {k: v.detach().cpu() for k, v in self.callback_metrics.items()}
            checkpoint["optimizer_states"] = [opt.state_dict() for opt in self.optimizers]
            checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in self.lr_scheduler_configs]
            checkpoint["callbacks"] = {c.state_key: c.state_dict() for c in self.callbacks}
            plugins: dict[str, Any] = {}
            for answer in self.hook.torchplug_state_dict(trainer=self):
                if answer:
                    plugins.update(answer)
            checkpoint["plugins"] = plugins
            checkpoint["rng_states"] = save_time_rng
            if self.datamodule is not None:
                checkpoint["datamodule"] = self.datamodule.state_dict()
        module.on_save_checkpoint(checkpoint)
        for callback in self.callbacks:
            if _has_override(callback, "on_save_checkpoint", Callback):
                callback.on_save_checkpoint(self, module, checkpoint)
        return checkpoint

    def _resolve_ckpt_path(self, ckpt_path: Any) -> str:
        if ckpt_path in ("last", "best"):
            callback = self.checkpoint_callback
            found = None
            if callback is not None:
                found = callback.last_model_path if ckpt_path == "last" else callback.best_model_path
            if not found and ckpt_path == "last":
                candidates = sorted(Path(self.default_root_dir).glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
                found = str(candidates[-1]) if candidates else None
            if not found and ckpt_path == "best":
                found = self._best_from_disk()
            if not found:
                raise MisconfigurationError(
                    f"ckpt_path={ckpt_path!r}: no {ckpt_path} checkpoint found (looked in the checkpoint callback and "
                    f"under default_root_dir={self.default_root_dir!r}); pass a path"
                )
            return str(found)
        path = os.fspath(ckpt_path)
        if not os.path.isfile(path):
            raise MisconfigurationError(f"ckpt_path={path!r}: no such checkpoint file")
        return path

    def _best_from_disk(self) -> str | None:
        from torchplug._checkpoint import load_checkpoint

        for path in sorted(Path(self.default_root_dir).glob("**/*.ckpt"), key=lambda p: -p.stat().st_mtime):
            try:
                state = load_checkpoint(path).get("callbacks", {})
            except MisconfigurationError:  # not one of ours, or unreadable: look further
                continue
            for key, value in state.items():
                if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
                    if os.path.isfile(value["best_model_path"]):
                        return value["best_model_path"]
        return None

    def _restore(self, path: str, stage: str) -> None:
        from torchplug._checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        self.ckpt_path = path
        module = self.lightning_module
        state = checkpoint.get("state_dict")
        if state is None:
            raise MisconfigurationError(f"ckpt_path={path!r} holds no 'state_dict'; it is not a torchplug checkpoint")
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise MisconfigurationError(
                f"ckpt_path={path!r} does not fit {type(module).__name__}: missing keys {missing}, unexpected keys "
                f"{unexpected}"
            )
        module.on_load_checkpoint(checkpoint)
        for callback in self.callbacks:
            if _has_override(callback, "on_load_checkpoint", Callback):
                callback.on_load_checkpoint(self, module, checkpoint)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise MisconfigurationError(f"ckpt_path={path!r} does not fit {type(module).__name__}: {err}") from None
        if stage != "fit":
            return
        if "loops" not in checkpoint:
            raise MisconfigurationError(
                f"ckpt_path={path!r} was saved with weights_only=True and cannot resume training; load its weights "
                "with torchplug.load_checkpoint(path)['state_dict'] instead"
            )
        for opt, opt_state in zip(self.optimizers, checkpoint["optimizer_states"]):
            opt.load_state_dict(opt_state)
        if len(checkpoint["optimizer_states"]) != len(self.optimizers):
            raise MisconfigurationError(
                f"ckpt_path={path!r} holds {len(checkpoint['optimizer_states'])} optimizer states but "
                f"configure_optimizers returned {len(self.optimizers)}"
            )
        for config, sched_state in zip(self.lr_scheduler_configs, checkpoint["lr_schedulers"]):
            config.scheduler.load_state_dict(sched_state)
        callback_states = checkpoint.get("callbacks", {})
        for callback in self.callbacks:
            if callback.state_key in callback_states:
                callback.load_state_dict(callback_states[callback.state_key])
        if self.datamodule is not None and "datamodule" in checkpoint:
            self.datamodule.load_state_dict(checkpoint["datamodule"])
        self.hook.torchplug_load_state_dict(trainer=self, states=checkpoint.get("plugins", {}))
        loops = checkpoint["loops"]
        self.global_step = checkpoint["global_step"]
        self.callback_metrics.update(checkpoint.get("callback_metrics", {}))
        self._total_batches = loops.get("total_batches", 0)
        self._validated_at = loops.get("validated_at", -1)
        if loops["phase"] == "complete":  # only on_train_epoch_end hooks were left: start the next epoch
            self.current_epoch = checkpoint["epoch"] + 1
            loops = None
        else:
            self.current_epoch = checkpoint["epoch"]
        self._restored = {
            "loops": loops,
            "rng_states": checkpoint["rng_states"],
            "callback_metrics": dict(self.callback_metrics),
        }


# ======================================================================================================== helpers
class _HotHooks:
    """Per-batch hooks bound once per run: a hook that only the core's defaults answer is called directly.

    That keeps the per-step cost of the plugin system near zero; with ``TORCHPLUG_TRACE_HOOKS`` every call goes
    through pluggy so tracing sees it.
    """

    _NAMES = (
        "batch_to_device", "convert_batch", "forward", "step_output", "no_sync", "backward", "on_batch_end",
        "reduce_gradients", "unscale_gradients", "optimizer_step",
    )  # fmt: skip

    def __init__(self, trainer: Trainer) -> None:
        pm = trainer.plugin_manager
        tracing = os.environ.get("TORCHPLUG_TRACE_HOOKS", "") not in ("", "0")
        defaults = pm.get_plugin("torchplug._defaults")
        for name in self._NAMES:
            caller = getattr(pm.hook, f"torchplug_{name}")
            impls = caller.get_hookimpls()
            if not tracing and not impls:
                setattr(self, name, _noop)
            elif not tracing and len(impls) == 1 and impls[0].plugin is defaults:
                setattr(self, name, impls[0].function)
            else:
                setattr(self, name, caller)
        if self.step_output == defaults.torchplug_step_output:
            self.step_output = _identity_step_output
        to_device, convert, device = self.batch_to_device, self.convert_batch, trainer.root_device
        if convert == defaults.torchplug_convert_batch:
            if to_device == defaults.torchplug_batch_to_device:
                self.prepare_batch = functools.partial(move_data_to_device, device=device)
            else:

                def prepare_batch(batch: Any) -> Any:
                    return to_device(trainer=trainer, batch=batch, device=device)

                self.prepare_batch = prepare_batch
        else:

            def prepare_and_convert(batch: Any) -> Any:
                return convert(trainer=trainer, batch=to_device(trainer=trainer, batch=batch, device=device))

            self.prepare_batch = prepare_and_convert
        wrapped = trainer._wrapped_module
        if self.forward == defaults.torchplug_forward and type(wrapped) is StepModule:
            module = wrapped.module  # nothing wraps the step: call the user's method directly
            steps = {stage: getattr(module, method) for stage, method in _STEP_METHODS.items()}

            def forward(trainer: Trainer, stage: str, args: tuple[Any, ...]) -> Any:
                return steps[stage](*args)

            self.forward = forward


def _noop(**kwargs: Any) -> None:
    return None


def _identity_step_output(trainer: Trainer, stage: str, output: Any) -> Any:
    return output


class _Closure:
    """The last micro-batch of an optimizer step: forward, backward and the pre-step work; returns the loss."""

    __slots__ = ("trainer", "batch", "batch_idx", "optimizer", "calls", "output")

    def __init__(self, trainer: Trainer, batch: Any, batch_idx: int, optimizer: Any) -> None:
        self.trainer, self.batch, self.batch_idx, self.optimizer = trainer, batch, batch_idx, optimizer
        self.calls = 0
        self.output: Any = None

    def __call__(self) -> Any:
        trainer = self.trainer
        if self.calls:  # optimizers such as LBFGS evaluate the closure several times
            self.optimizer.zero_grad(set_to_none=True)
        self.calls += 1
        # Training runs with grad enabled, and optimizer.step() enables it around a closure too.
        self.output = output = trainer._forward_backward(self.batch, self.batch_idx, self.optimizer)
        if not trainer._quiet_pre_step:
            trainer._before_optimizer_step(self.optimizer, clip=True)
        if output is None:
            return None
        return output if isinstance(output, torch.Tensor) else output["loss"]


class _OptimizerHandle:
    """What ``self.optimizers()`` returns in manual optimization: ``step`` goes through the step hooks."""

    def __init__(self, trainer: Trainer, optimizer: Any) -> None:
        self._trainer, self.optimizer = trainer, optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        trainer, optimizer = self._trainer, self.optimizer
        result: list[Any] = []

        def step_closure() -> Any:
            loss = closure() if closure is not None else None
            trainer._before_optimizer_step(optimizer, clip=False)
            result.append(loss)
            return loss

        # Manual optimization steps LR schedulers itself (self.lr_schedulers()), as in Lightning.
        trainer.hook.torchplug_optimizer_step(trainer=trainer, optimizer=optimizer, closure=step_closure)
        if not result:
            step_closure()
        trainer.global_step += 1
        return result[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._trainer._zero_grad(self.optimizer) if set_to_none else self.optimizer.zero_grad(set_to_none=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"


def _with_index_last(iterable: Iterable[Any], last: int) -> Iterator[tuple[Any, bool]]:
    """Yield ``(item, is_last)`` for an iterable of known length (``last`` is the final index)."""
    for i, item in enumerate(iterable):
        yield item, i == last


def _with_last(iterable: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """Yield ``(item, is_last)``, reading one item ahead so the end is known without ``len``."""
    iterator = iter(iterable)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def _detached_output(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return {**output, "loss": output["loss"].detach()}
    return output


def _get_rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        states["numpy"] = (str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    return states


def _python_rng_state() -> tuple[Any, ...]:
    version, internal, gauss = random.getstate()
    return (version, tuple(internal), gauss)


def _set_rng_states(states: dict[str, Any] | None) -> None:
    if not states:
        return
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    if "numpy" in states:
        try:
            import numpy as np
        except ImportError:
            return
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def _safe_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as data that ``weights_only`` loading accepts; other objects become their repr."""

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v) for v in value)
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        return repr(value)

    return {str(k): convert(v) for k, v in hparams.items()}


def _version() -> str:
    from torchplug import __version__

    return __version__


