"""``OnExceptionCheckpoint``: save the run to one fixed file when a stage ends with an exception (Ctrl-C included)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback
from torchplug.callbacks.model_checkpoint import _may_save_after

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer


class OnExceptionCheckpoint(Callback):
    """Save ``<dirpath>/<filename>.ckpt`` in ``on_exception``, overwriting an earlier one (Lightning's callback).

    ``dirpath`` is required: an exception may come before anything else decides a folder. A stage that ends without
    an exception removes the file in ``teardown``, so a file that is there was left by a run that did not finish.
    Ctrl-C and SIGTERM stop the run after an optimizer step (see docs/ddp.md), so resuming from the file
    (``fit(ckpt_path=callback.ckpt_path)``) continues exactly. With several processes it saves only when every rank
    stopped together (a signal): an exception raised on one rank alone is not saved, with a warning.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "on_exception") -> None:
        if not filename or not isinstance(filename, str):
            raise MisconfigurationError(
                f"OnExceptionCheckpoint(filename={filename!r}): give a file name without the extension, e.g. 'on_exception'"
            )
        self.dirpath = os.fspath(dirpath)
        self.filename = filename
        self._raised = False

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._raised = False

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        self._raised = True
        if _may_save_after(trainer, exception, "OnExceptionCheckpoint"):
            trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if not self._raised and trainer.is_global_zero and os.path.lexists(self.ckpt_path):
            os.remove(self.ckpt_path)


__all__ = ["OnExceptionCheckpoint"]
