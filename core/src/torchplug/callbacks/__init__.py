"""Callbacks: code that runs at the loop's hook points."""

from torchplug.callbacks._base import Callback
from torchplug.callbacks.early_stopping import EarlyStopping
from torchplug.callbacks.lr_monitor import LearningRateMonitor
from torchplug.callbacks.model_checkpoint import ModelCheckpoint
from torchplug.callbacks.model_summary import ModelSummary, summarize
from torchplug.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from torchplug.callbacks.progress import ProgressBar

TQDMProgressBar = ProgressBar  # Lightning's name for the same bar

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "TQDMProgressBar",
    "summarize",
]
