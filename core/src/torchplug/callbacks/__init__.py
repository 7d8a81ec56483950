"""Callbacks: code that runs at the loop's hook points."""

from torchplug.callbacks._base import Callback
from torchplug.callbacks.early_stopping import EarlyStopping
from torchplug.callbacks.lambda_function import LambdaCallback
from torchplug.callbacks.lr_monitor import LearningRateMonitor
from torchplug.callbacks.model_checkpoint import ModelCheckpoint
from torchplug.callbacks.model_summary import ModelSummary, summarize
from torchplug.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from torchplug.callbacks.prediction_writer import BasePredictionWriter
from torchplug.callbacks.progress import ProgressBar, TQDMProgressBar
from torchplug.callbacks.rich_model_summary import RichModelSummary
from torchplug.callbacks.rich_progress import RichProgressBar, RichProgressBarTheme

__all__ = [
    "BasePredictionWriter",
    "Callback",
    "EarlyStopping",
    "LambdaCallback",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "RichModelSummary",
    "RichProgressBar",
    "RichProgressBarTheme",
    "TQDMProgressBar",
    "summarize",
]
