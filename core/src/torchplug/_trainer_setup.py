"""What ``Trainer(callbacks=..., logger=..., enable_*=...)`` makes: the callbacks with the defaults, the loggers."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from torchplug._errors import ArgumentTypeError, ConflictError, MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.trainer import Trainer


def default_callbacks(
    callbacks: Any, checkpointing: bool, progress_bar: bool, model_summary: bool
) -> list[Callback]:
    """The user's callbacks checked, with the default ones the switches ask for; checkpoints last."""
    from torchplug import callbacks as cb

    given = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
    for c in given:
        if not isinstance(c, Callback):
            raise MisconfigurationError(f"callbacks: {c!r} is not a torchplug.Callback")
    result = list(given)
    if checkpointing and not any(isinstance(c, cb.ModelCheckpoint) for c in given):
        result.append(cb.ModelCheckpoint())
    if not checkpointing and any(isinstance(c, cb.ModelCheckpoint) for c in given):
        raise MisconfigurationError(
            "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks list; "
            "drop one of them"
        )
    bars = [c for c in given if isinstance(c, cb.ProgressBar)]
    if len(bars) > 1:
        raise MisconfigurationError(
            f"You added multiple progress bar callbacks to the Trainer ({bars}), but there can only be one"
        )
    if bars and not progress_bar:
        raise MisconfigurationError(
            f"Trainer was configured with `enable_progress_bar=False` but found `{type(bars[0]).__name__}` in the "
            "callbacks list; drop one of them"
        )
    if progress_bar and not bars:
        result.append(cb.TQDMProgressBar(plain=None))  # tqdm in a terminal, plain lines in a log
    if model_summary and not any(isinstance(c, cb.ModelSummary) for c in given):
        # a rich progress bar asks for the summary drawn the same way
        rich = any(isinstance(c, cb.RichProgressBar) for c in given)
        result.append(cb.RichModelSummary() if rich else cb.ModelSummary())
    stateful = [c for c in result if getattr(type(c), "state_dict", None) not in (None, Callback.state_dict)]
    for c in stateful:
        if [other.state_key for other in stateful].count(c.state_key) > 1:
            raise ConflictError(
                f"Found more than one stateful callback of type `{type(c).__name__}` with state_key "
                f"{c.state_key!r}: their states would overwrite each other in checkpoints. Give each a distinct "
                "configuration (the `callback.state_key` must be unique among all callbacks in the Trainer)"
            )
    # checkpoints last, so they see what every other callback did this step (Lightning's order)
    return [c for c in result if not isinstance(c, cb.ModelCheckpoint)] + [
        c for c in result if isinstance(c, cb.ModelCheckpoint)
    ]


def make_loggers(logger: Any, default_root_dir: str) -> list[Any]:
    """``True``: Lightning's default, a TensorBoardLogger when ``tensorboard`` is installed, else a CSVLogger."""
    from torchplug.loggers import CSVLogger, TensorBoardLogger

    if logger is True:
        if importlib.util.find_spec("tensorboard") is not None:
            return [TensorBoardLogger(default_root_dir)]
        return [CSVLogger(default_root_dir)]
    if logger is False or logger is None:
        return []
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    for item in loggers:  # any object with the logger methods the trainer calls (a Logger, a Mock)
        if not all(callable(getattr(item, m, None)) for m in ("log_metrics", "log_hyperparams")):
            raise ArgumentTypeError(
                f"logger={item!r}: expected True, False, a torchplug Logger (something with log_metrics and "
                "log_hyperparams) or a list of them"
            )
    return loggers


@contextmanager
def init_module(trainer: Trainer) -> Iterator[None]:
    """``trainer.init_module()``, and where ``configure_model`` runs: the precision plugin's
    ``module_init_context()`` (its dtype as the default one for ``*-true``) and, for a single device, that device."""
    device = trainer.hook.torchplug_root_device(trainer=trainer) if trainer.world_size == 1 else None
    with device if device is not None else nullcontext(), trainer.precision_plugin.module_init_context():
        yield


def validation_enabled(trainer: Trainer) -> bool:
    """Lightning's ``enable_validation``: during and after ``fit`` what its loop decided; otherwise whether the module
    has a ``validation_step`` and validation data, and ``limit_val_batches`` is above 0."""
    from torchplug._data import _implemented
    from torchplug._schedule import implements

    loop = trainer._loop
    if loop is not None and loop.stage == "fit" and hasattr(loop, "val_enabled"):
        return bool(loop.val_enabled)
    module = trainer.lightning_module
    sources = [o for o in (trainer.datamodule, module) if o is not None]
    return bool(
        module is not None and implements(module, "validation_step") and trainer.limit_val_batches != 0
        and any(_implemented(o, "val_dataloader") for o in sources)
    )  # fmt: skip
