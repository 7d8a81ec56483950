"""Hyperparameter searches with a trainer: the learning rate range test and the batch size search.

``Tuner(trainer).lr_find(model)`` and ``Tuner(trainer).scale_batch_size(model)`` run them before training; the
callbacks :class:`torchplug.callbacks.LearningRateFinder` and :class:`torchplug.callbacks.BatchSizeFinder` run them at
the start of a stage.
"""

from torchplug.tuner._lr_finder import LRFinder
from torchplug.tuner._memory import garbage_collection_cuda, is_oom_error
from torchplug.tuner._tuning import Tuner

__all__ = ["LRFinder", "Tuner", "garbage_collection_cuda", "is_oom_error"]
