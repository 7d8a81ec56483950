"""``LearningRateFinder``: the learning rate range test at the start of ``fit``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer
    from torchplug.tuner import LRFinder


class LearningRateFinder(Callback):
    """Before training starts, train ``num_training_steps`` steps while the learning rate grows from ``min_lr`` to
    ``max_lr`` (``mode="exponential"`` or ``"linear"``), then put the model, optimizer and trainer back and, with
    ``update_attr``, set the suggested rate on the model's ``lr``/``learning_rate`` (or ``attr_name``) and on the
    optimizer. The search stops early when the smoothed loss exceeds ``early_stop_threshold`` times its best (None:
    never). The result is ``optimal_lr`` (:class:`torchplug.tuner.LRFinder`).

    To search again later in training, subclass it and call :meth:`lr_find` from another hook at the epochs you
    choose (say ``on_train_epoch_start`` for ``trainer.current_epoch in milestones``).
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        from torchplug.tuner._lr_finder import check_arguments

        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}; got mode={mode!r}")
        check_arguments(mode, min_lr, max_lr, num_training_steps, early_stop_threshold)
        self._min_lr, self._max_lr, self._num_training_steps = min_lr, max_lr, num_training_steps
        self._mode, self._early_stop_threshold = mode, early_stop_threshold
        self._update_attr, self._attr_name = update_attr, attr_name
        self.optimal_lr: LRFinder | None = None

    def lr_find(self, trainer: Trainer, pl_module: Module) -> None:
        """Run the search now (inside ``fit``); the random state is left as it was before it."""
        from torchplug.tuner._lr_finder import lr_find

        self.optimal_lr = lr_find(
            trainer, pl_module, min_lr=self._min_lr, max_lr=self._max_lr, num_training=self._num_training_steps,
            mode=self._mode, early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
            attr_name=self._attr_name,
        )  # fmt: skip

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.lr_find(trainer, pl_module)
