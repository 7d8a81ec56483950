"""Loggers: where metrics go. ``CSVLogger`` is the default; ``TensorBoardLogger`` needs the ``tensorboard`` extra,
``WandbLogger``, ``CometLogger`` and ``LitLogger`` the ``wandb``, ``comet_ml`` and ``litlogger`` packages (imported
only when the logger is made or used)."""

from torchplug.loggers._base import DummyExperiment, DummyLogger, Logger
from torchplug.loggers.comet import CometLogger
from torchplug.loggers.csv_logs import CSVLogger
from torchplug.loggers.litlogger import LitLogger
from torchplug.loggers.tensorboard import TensorBoardLogger
from torchplug.loggers.wandb import WandbLogger

__all__ = [
    "CSVLogger",
    "CometLogger",
    "DummyExperiment",
    "DummyLogger",
    "LitLogger",
    "Logger",
    "TensorBoardLogger",
    "WandbLogger",
]
