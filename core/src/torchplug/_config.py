"""What a stage needs from the module, checked before it runs (Lightning's configuration validator, same messages).

``fit`` needs ``training_step`` and ``configure_optimizers``, and warns when only one of ``validation_step`` and
validation data is there; ``validate``/``test`` need their step; ``predict`` needs ``predict_step`` or ``forward``.
Epoch-end hooks removed in Lightning 2.0 (``training_epoch_end``, ...) are refused with the way to port them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from torchplug._errors import MisconfigurationError, PossibleUserWarning
from torchplug._schedule import implements, overrides

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

_REMOVED = {
    "training_epoch_end": "on_train_epoch_end",
    "validation_epoch_end": "on_validation_epoch_end",
    "test_epoch_end": "on_test_epoch_end",
}


def check(trainer: Trainer, module: Module, stage: str, given: dict[str, Any]) -> None:
    name = type(module).__name__
    for old, new in _REMOVED.items():
        if callable(getattr(module, old, None)) and (stage == "fit" or old != "training_epoch_end"):
            raise NotImplementedError(
                f"Support for `{old}` has been removed in v2.0.0 (Lightning) and torchplug never had it: {name} "
                f"defines it. Migrate it to `{new}`, keeping the step outputs you need in an attribute of the module"
            )
    if stage == "fit":
        _check_fit(trainer, module, name, given)
    elif stage == "predict":
        if getattr(module, "predict_step", None) is None:
            raise MisconfigurationError(f"`predict_step` cannot be None to run `Trainer.predict` ({name})")
        has_forward = getattr(module, "forward", None) is not None and overrides(module, "forward", _nn_module())
        if not implements(module, "predict_step") and not has_forward:
            raise MisconfigurationError(f"`Trainer.predict` requires `forward` method to run ({name} has none)")
    else:
        step = "validation_step" if stage == "validate" else "test_step"
        if not implements(module, step):
            raise MisconfigurationError(f"No `{step}()` method defined to run `Trainer.{stage}` ({name})")


def _check_fit(trainer: Trainer, module: Module, name: str, given: dict[str, Any]) -> None:
    for method in ("training_step", "configure_optimizers"):
        if not implements(module, method):
            raise MisconfigurationError(
                f"No `{method}()` method defined. Lightning `Trainer` expects as minimum a `training_step()`, "
                f"`train_dataloader()` and `configure_optimizers()` to be defined ({name} lacks {method})"
            )
    owners = [o for o in (trainer.datamodule, module) if o is not None]
    has_val_data = given.get("val") is not None or any(_has_loader(o, "val_dataloader") for o in owners)
    has_val_step = implements(module, "validation_step")
    if has_val_data and not has_val_step:
        warnings.warn("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
                      UserWarning, stacklevel=5)  # fmt: skip
    if has_val_step and not has_val_data:
        warnings.warn("You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.",
                      PossibleUserWarning, stacklevel=5)  # fmt: skip
    if not module.automatic_optimization:
        if trainer.gradient_clip_val:
            raise MisconfigurationError(
                "Automatic gradient clipping is not supported for manual optimization: gradient_clip_val is not "
                f"applied with manual optimization (self.automatic_optimization = False). Remove "
                f"`Trainer(gradient_clip_val={trainer.gradient_clip_val})` and clip in training_step "
                "(self.clip_gradients(opt, ...))"
            )
        if trainer.accumulate_grad_batches != 1:
            raise MisconfigurationError(
                "Automatic gradient accumulation is not supported for manual optimization: accumulate_grad_batches "
                "is not applied with manual optimization (self.automatic_optimization = False). Remove "
                f"`Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})` and accumulate in training_step"
            )


def _has_loader(owner: Any, name: str) -> bool:
    from torchplug._data import _implemented

    return getattr(owner, name, None) is not None and _implemented(owner, name)


def _nn_module() -> type:
    from torch import nn

    return nn.Module
