"""Callbacks: code that runs at the loop's hook points."""

from torchplug.callbacks._base import Callback
from torchplug.callbacks.batch_size_finder import BatchSizeFinder
from torchplug.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
from torchplug.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from torchplug.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from torchplug.callbacks.lambda_function import LambdaCallback
from torchplug.callbacks.lr_finder import LearningRateFinder
from torchplug.callbacks.lr_monitor import LearningRateMonitor
from torchplug.callbacks.model_checkpoint import ModelCheckpoint
from torchplug.callbacks.model_summary import ModelSummary, summarize
from torchplug.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from torchplug.callbacks.prediction_writer import BasePredictionWriter
from torchplug.callbacks.progress import ProgressBar, TQDMProgressBar
from torchplug.callbacks.pruning import ModelPruning
from torchplug.callbacks.rich_model_summary import RichModelSummary
from torchplug.callbacks.rich_progress import RichProgressBar, RichProgressBarTheme
from torchplug.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from torchplug.callbacks.timer import Timer

__all__ = [
    "BackboneFinetuning",
    "BaseFinetuning",
    "BasePredictionWriter",
    "BatchSizeFinder",
    "Callback",
    "EarlyStopping",
    "EarlyStoppingReason",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateFinder",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelPruning",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "RichModelSummary",
    "RichProgressBar",
    "RichProgressBarTheme",
    "StochasticWeightAveraging",
    "TQDMProgressBar",
    "Timer",
    "summarize",
]
