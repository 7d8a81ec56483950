"""Loggers: where metrics go. ``CSVLogger`` is the default; ``TensorBoardLogger`` needs the ``tensorboard`` extra,
``WandbLogger`` the ``wandb`` package (imported only when the logger is used)."""

from torchplug.loggers._base import DummyExperiment, DummyLogger, Logger
from torchplug.loggers.csv_logs import CSVLogger
from torchplug.loggers.tensorboard import TensorBoardLogger
from torchplug.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "DummyExperiment", "DummyLogger", "Logger", "TensorBoardLogger", "WandbLogger"]
