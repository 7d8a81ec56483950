"""torchplug: a PyTorch training loop whose hardware, distribution and precision are pluggable backends."""

import logging as _logging

from torchplug._checkpoint import atomic_save, load_checkpoint, temporary_path
from torchplug._errors import (
    MisconfigurationError,
    PluginError,
    PluginLoadError,
    ProcessFailedError,
    SIGTERMException,
)
from torchplug._hooks import hookimpl
from torchplug._optim import LightningOptimizer
from torchplug._states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from torchplug._step import StepOps
from torchplug._types import ClusterInfo, Restart, RunSpec, World
from torchplug.callbacks._base import Callback
from torchplug.module import DataModule, LightningDataModule, LightningModule, Module
from torchplug.strategies import StepModule
from torchplug.trainer import Trainer
from torchplug.utilities import seed_everything

__version__ = "0.1.0"

# Rank 0's INFO lines (the backends in use) reach the terminal unless the application configured logging itself.
_log = _logging.getLogger("torchplug")
if not _log.handlers and not _logging.getLogger().handlers:
    _log.setLevel(_logging.INFO)
    _log.addHandler(_logging.StreamHandler())
    _log.propagate = False

__all__ = [
    "Callback",
    "ClusterInfo",
    "DataModule",
    "LightningDataModule",
    "LightningModule",
    "LightningOptimizer",
    "MisconfigurationError",
    "Module",
    "PluginError",
    "PluginLoadError",
    "ProcessFailedError",
    "Restart",
    "RunSpec",
    "RunningStage",
    "SIGTERMException",
    "StepModule",
    "StepOps",
    "Trainer",
    "TrainerFn",
    "TrainerState",
    "TrainerStatus",
    "World",
    "atomic_save",
    "hookimpl",
    "load_checkpoint",
    "seed_everything",
    "temporary_path",
]
