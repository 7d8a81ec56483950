"""Profilers: where a run spends its time (``Trainer(profiler="simple" | "advanced" | "pytorch")``).

A profiler records *actions*, named as in Lightning: ``[LightningModule]MyModel.on_train_start``,
``[Callback]ModelCheckpoint{...}.on_train_epoch_end``, ``[LightningDataModule]MyData.setup``,
``[Strategy]SingleDeviceStrategy.training_step``, ``run_training_epoch``. Without a profiler (the default) nothing is
timed and the loop binds no timing code at all.
"""

from torchplug.profilers._advanced import AdvancedProfiler
from torchplug.profilers._base import PassThroughProfiler, Profiler
from torchplug.profilers._pytorch import PyTorchProfiler, RegisterRecordFunction
from torchplug.profilers._simple import SimpleProfiler

__all__ = [
    "AdvancedProfiler",
    "PassThroughProfiler",
    "Profiler",
    "PyTorchProfiler",
    "RegisterRecordFunction",
    "SimpleProfiler",
]
