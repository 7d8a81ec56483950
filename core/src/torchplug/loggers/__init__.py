"""Loggers: where metrics go. ``CSVLogger`` is the default; ``TensorBoardLogger`` needs the ``tensorboard`` extra."""

from torchplug.loggers._base import DummyExperiment, DummyLogger, Logger
from torchplug.loggers.csv_logs import CSVLogger
from torchplug.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "DummyExperiment", "DummyLogger", "Logger", "TensorBoardLogger"]
