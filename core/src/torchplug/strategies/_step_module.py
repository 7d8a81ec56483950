from __future__ import annotations

from typing import Any

from torch import nn

STEP_METHODS = {
    "train": "training_step",
    "validation": "validation_step",
    "test": "test_step",
    "predict": "predict_step",
}


class StepModule(nn.Module):
    """Routes ``forward(stage, *args)`` to the user's ``<stage>_step``, so a wrapper around ``forward``
    (DistributedDataParallel, DataParallel) sees every step without the user writing ``forward`` for it.

    Its only child is the user's module, registered as ``module``, so ``state_dict`` keys carry a ``module.``
    prefix; checkpoints are always taken from the user's module itself, never from this.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, stage: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, STEP_METHODS[stage])(*args, **kwargs)
