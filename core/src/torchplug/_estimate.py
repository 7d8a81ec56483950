"""``trainer.estimated_stepping_batches``: how many optimizer steps ``fit`` takes at most (for schedulers such as
OneCycleLR, often asked in ``configure_optimizers``, before the training data was loaded)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchplug.trainer import Trainer


def stepping_batches(trainer: Trainer) -> int | float:
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if max_epochs is None:  # what fit will resolve it to
        max_epochs = 1000 if max_steps == -1 and trainer._max_time_s is None else -1
    if max_epochs == -1:
        return math.inf if max_steps == -1 else max_steps
    loop = trainer._loop
    if loop is not None and loop.stage == "fit" and loop.train_loader is None:
        loop.load_train_data()  # asked before fit loaded it (configure_optimizers): load it now, once
    elif (loop is None or loop.stage != "fit") and not trainer.num_training_batches:
        from torchplug._errors import MisconfigurationError

        raise MisconfigurationError(
            "trainer.estimated_stepping_batches is known once fit() runs (e.g. in configure_optimizers) and after it; "
            "this trainer has not fitted"
        )
    batches = trainer.num_training_batches
    if batches == math.inf:
        return max_steps
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(max_epochs, 1)
    return min(steps, max_steps) if max_steps != -1 else steps
