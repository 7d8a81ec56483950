"""``BatchSizeFinder``: the largest batch size that fits in memory, found at the start of a stage."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from torchplug import _trial
from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer


class BatchSizeFinder(Callback):
    """At the start of ``fit`` (and of ``validate``, ``test`` and ``predict``), run ``steps_per_trial`` steps at
    growing batch sizes from ``init_val`` until one runs out of memory (a CUDA, cuDNN or host allocation failure;
    any other error is raised), for at most ``max_trials`` sizes and at most ``max_val``. ``mode="power"`` keeps
    the largest size that fit; ``"binsearch"`` bisects between it and the one that failed, then takes ``margin`` off.

    The size is read from and written to ``batch_arg_name`` on the model, its ``hparams``, the datamodule or its
    ``hparams`` (every one that has it), so the loaders must be made by ``*_dataloader()`` methods reading it. The
    weights, optimizer and trainer are put back after the search, and the stage runs with the size found,
    ``optimal_batch_size``. To search at other times, subclass it and call :meth:`scale_batch_size` from another hook.
    """

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> None:
        from torchplug.tuner._batch_size import check_arguments

        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}; got mode={mode!r}")
        check_arguments(mode, margin, steps_per_trial, init_val, max_trials, max_val)
        self.optimal_batch_size: int | None = init_val
        self._mode, self._steps_per_trial, self._init_val = mode, steps_per_trial, init_val
        self._max_trials, self._batch_arg_name, self._margin, self._max_val = (
            max_trials,
            batch_arg_name,
            margin,
            max_val,
        )

    def setup(self, trainer: Trainer, pl_module: Module, stage: str | None = None) -> None:
        from torchplug.tuner import _attributes

        if trainer.world_size > 1:
            raise MisconfigurationError(
                f"The Batch size finder is not supported with distributed strategies (this trainer runs "
                f"{trainer.world_size} processes); find the size on one device, then pass it to the loaders"
            )
        loop = _trial.active_loop(trainer)
        if loop is not None and loop.module is pl_module:
            if _trial.data_given(loop):
                raise MisconfigurationError(
                    "The Batch size finder cannot be used with dataloaders passed directly to `.fit()` or the other "
                    "entry points: it must make them again at each size. Make them in the LightningModule's or "
                    "LightningDataModule's *_dataloader() methods, or remove the callback."
                )
            if stage != "fit" and _trial.eval_loader_count(loop) > 1:
                kind = {"validate": "val"}.get(str(stage), str(stage))
                raise MisconfigurationError(
                    f"The Batch size finder cannot be used with multiple {kind} dataloaders."
                )
        if not _attributes.has(pl_module, self._batch_arg_name):
            raise MisconfigurationError(
                f"Field {self._batch_arg_name} not found in `model`, `datamodule`, nor their `hparams` attributes: "
                "set it there, or name yours with batch_arg_name="
            )
        hparams = getattr(pl_module, "hparams", None)
        if (
            hasattr(pl_module, self._batch_arg_name)
            and hparams is not None
            and self._batch_arg_name in hparams
        ):
            warnings.warn(
                f"Field `model.{self._batch_arg_name}` and `model.hparams.{self._batch_arg_name}` are mutually "
                f"exclusive! `model.{self._batch_arg_name}` will be used as the initial batch size for scaling. If "
                "this is not the intended behavior, please remove either one.",
                UserWarning,
                stacklevel=2,
            )

    def scale_batch_size(self, trainer: Trainer, pl_module: Module) -> None:
        """Run the search now, inside the running stage."""
        from torchplug.tuner._batch_size import scale_batch_size

        self.optimal_batch_size = scale_batch_size(
            trainer, mode=self._mode, steps_per_trial=self._steps_per_trial, init_val=self._init_val,
            max_trials=self._max_trials, batch_arg_name=self._batch_arg_name, margin=self._margin,
            max_val=self._max_val,
        )  # fmt: skip

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "validate":
            return  # validation inside fit runs at the size fit found
        self.scale_batch_size(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.scale_batch_size(trainer, pl_module)
