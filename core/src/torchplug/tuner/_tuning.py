"""``Tuner``: the learning rate and batch size searches, run on their own before training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchplug import _trial
from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import DataModule, Module
    from torchplug.trainer import Trainer
    from torchplug.tuner._lr_finder import LRFinder

_METHODS = ("fit", "validate", "test", "predict")


class Tuner:
    """Searches for a model's hyperparameters with a trainer: :meth:`lr_find` and :meth:`scale_batch_size`.

    Each runs the trainer's stage only as far as the search goes (the stage ends once it is done, nothing else is
    trained), puts the weights and the trainer back as they were, and leaves the result on the model; then call
    ``trainer.fit(model)`` as usual.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def scale_batch_size(
        self,
        model: Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: DataModule | None = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> int | None:
        """The largest batch size (from ``init_val``, doubling; ``mode="binsearch"`` then bisects and takes
        ``margin`` off) with which ``steps_per_trial`` steps of ``method`` run without running out of memory. It is
        set on ``batch_arg_name`` of the model, its hparams, the datamodule or its hparams, which the
        ``*_dataloader()`` methods must read. None when ``fast_dev_run`` skips the search."""
        from torchplug.callbacks.batch_size_finder import BatchSizeFinder

        _check_arguments(method, train_dataloaders, val_dataloaders, dataloaders)
        trainer = self._trainer
        if trainer.world_size > 1:
            raise ValueError(
                f"Tuning the batch size is currently not supported with distributed strategies (this trainer runs "
                f"{trainer.world_size} processes, strategy {trainer.strategy_name!r})"
            )
        _refuse_configured(trainer, BatchSizeFinder)
        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                                 batch_arg_name=batch_arg_name, margin=margin, max_val=max_val)  # fmt: skip
        modes = {
            m: m.training for m in model.modules()
        }  # an evaluation ended at its start leaves them in eval
        try:
            self._run(method, finder, model, train_dataloaders, val_dataloaders, dataloaders, datamodule)
        finally:
            for submodule, training in modes.items():
                submodule.training = training
        return finder.optimal_batch_size

    def lr_find(
        self,
        model: Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: DataModule | None = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> LRFinder | None:
        """The learning rate range test: ``num_training`` training steps with the learning rate growing from
        ``min_lr`` to ``max_lr`` (``mode``: ``"exponential"`` or ``"linear"``), stopped early when the smoothed loss
        exceeds ``early_stop_threshold`` times its best. Returns the :class:`~torchplug.tuner.LRFinder` (its
        ``results``, ``suggestion()`` and ``plot()``); with ``update_attr`` the suggestion is set on the model's
        ``lr`` or ``learning_rate`` (or ``attr_name``). None when ``fast_dev_run`` skips the search."""
        from torchplug.callbacks.lr_finder import LearningRateFinder

        if method != "fit":
            raise MisconfigurationError(
                f"lr_find(method={method!r}): method='fit' is the only valid configuration to run lr finder"
            )
        _check_arguments(method, train_dataloaders, val_dataloaders, dataloaders)
        _refuse_configured(self._trainer, LearningRateFinder)
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)  # fmt: skip
        self._run(method, finder, model, train_dataloaders, val_dataloaders, dataloaders, datamodule)
        return finder.optimal_lr

    def _run(self, method: str, finder: Callback, model: Module, train_dataloaders: Any, val_dataloaders: Any,
             dataloaders: Any, datamodule: Any) -> None:  # fmt: skip
        trainer = self._trainer
        added = [finder, _EndAfterSearch()]
        trainer.callbacks = added + trainer.callbacks
        try:
            if method == "fit":
                trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
            else:
                getattr(trainer, method)(model, dataloaders, datamodule=datamodule)
        finally:
            trainer.callbacks = [c for c in trainer.callbacks if all(c is not a for a in added)]


class _EndAfterSearch(Callback):
    """Ends the stage the tuner started once the finder before it ran its search (at the same start hook)."""

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        raise _trial.EndStage

    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            raise _trial.EndStage

    def on_test_start(self, trainer: Trainer, pl_module: Module) -> None:
        raise _trial.EndStage

    def on_predict_start(self, trainer: Trainer, pl_module: Module) -> None:
        raise _trial.EndStage


def _check_arguments(method: str, train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {_METHODS}.")
    if method == "fit" and dataloaders is not None:
        raise MisconfigurationError(
            "In tuner with method='fit', `dataloaders` argument should be None, please consider setting "
            "`train_dataloaders` and `val_dataloaders` instead."
        )
    if method != "fit" and (train_dataloaders is not None or val_dataloaders is not None):
        raise MisconfigurationError(
            f"In tuner with `method`={method!r}, `train_dataloaders` and `val_dataloaders` arguments should be None, "
            "please consider setting `dataloaders` instead."
        )


def _refuse_configured(trainer: Trainer, kind: type) -> None:
    if any(isinstance(c, kind) for c in trainer.callbacks):
        raise ValueError(
            f"Trainer is already configured with a `{kind.__name__}` callback, which runs the same search at the "
            f"start of each stage. Please remove it if you want to use the Tuner."
        )
