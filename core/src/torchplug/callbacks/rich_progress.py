"""``RichProgressBar``: progress drawn with the ``rich`` package (``pip install 'torchplug[rich]'``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import MisconfigurationError
from torchplug.callbacks.progress import ProgressBar

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID
    from rich.style import Style

    from torchplug.module import Module
    from torchplug.trainer import Trainer


def _require_rich(what: str) -> None:
    if importlib.util.find_spec("rich") is None:
        raise ModuleNotFoundError(
            f"`{what}` requires `rich` >= 10.2.2. Install it with `pip install 'torchplug[rich]'` (or "
            "`pip install -U rich`), or use the default `TQDMProgressBar`/`ModelSummary`."
        )


@dataclasses.dataclass
class RichProgressBarTheme:
    """The styles of a :class:`RichProgressBar`'s parts (any rich style: ``"bold red"``, ``"#6206E0"``, a ``Style``).

    ``metrics_format`` formats every metric that is not a string (``".3f"``, ``".3e"``); ``metrics_text_delimiter``
    goes between two metrics.
    """

    description: str | Style = ""
    progress_bar: str | Style = "#6206E0"
    progress_bar_finished: str | Style = "#6206E0"
    progress_bar_pulse: str | Style = "#6206E0"
    batch_progress: str | Style = ""
    time: str | Style = "dim"
    processing_speed: str | Style = "dim underline"
    metrics: str | Style = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


class RichProgressBar(ProgressBar):
    """Progress bars drawn with `rich <https://github.com/Textualize/rich>`_, on global rank 0.

    One rich ``Progress`` (``self.progress``) per ``fit``/``validate``/``test``/``predict`` call holds a task per
    bar: the sanity check, the training epoch (with the ``prog_bar=True`` metrics after it), validation, test or
    predict. A bar is reused for the next epoch or dataloader; ``leave=True`` keeps each epoch's training bar
    instead. ``refresh_rate`` is how many redraws a second at most (0 hides the bars); ``theme`` styles the parts;
    ``console_kwargs`` builds the ``rich.console.Console`` drawn on (default: rich's global console). Override
    :meth:`configure_columns` to choose the columns (the metrics column always comes last).
    """

    def __init__(
        self,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: RichProgressBarTheme | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _require_rich("RichProgressBar")
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationError(
                f"RichProgressBar(refresh_rate={refresh_rate!r}): use an int >= 0, redraws per second (0 hides it)"
            )
        super().__init__()
        self._refresh_rate = refresh_rate
        self.leave = leave
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self.progress: Progress | None = None
        self._metrics_column: Any = None
        self._running = False
        self._last_refresh = 0.0
        self._reset_ids()

    def _reset_ids(self) -> None:
        self.train_progress_bar_id: TaskID | None = None
        self.val_sanity_progress_bar_id: TaskID | None = None
        self.val_progress_bar_id: TaskID | None = None
        self.test_progress_bar_id: TaskID | None = None
        self.predict_progress_bar_id: TaskID | None = None

    def __getstate__(self) -> dict[str, Any]:
        # rich's Progress and Console hold locks and terminals: a pickled or copied bar starts over
        state = dict(self.__dict__)
        state.update(progress=None, _metrics_column=None, _running=False, _trainer=None)
        return state

    # ---------------------------------------------------------------------------------------------------- switches
    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    # ---------------------------------------------------------------------------------------------------- the bars
    @property
    def train_progress_bar(self) -> Task:
        return self._task(self.train_progress_bar_id, "train_progress_bar")

    @property
    def val_sanity_check_bar(self) -> Task:
        return self._task(self.val_sanity_progress_bar_id, "val_sanity_check_bar")

    @property
    def val_progress_bar(self) -> Task:
        return self._task(self.val_progress_bar_id, "val_progress_bar")

    @property
    def test_progress_bar(self) -> Task:
        return self._task(self.test_progress_bar_id, "test_progress_bar")

    @property
    def predict_progress_bar(self) -> Task:
        return self._task(self.predict_progress_bar_id, "predict_progress_bar")

    def _task(self, task_id: TaskID | None, name: str) -> Task:
        if self.progress is None or task_id is None:
            raise TypeError(
                f"The `{name}` of {type(self).__name__} has not been made yet: no such stage has run"
            )
        return self.progress.tasks[task_id]

    def configure_columns(self, trainer: Trainer) -> list[Any]:
        """The columns of every bar before the metrics: description, bar, batches done/total, time, speed."""
        from rich.progress import BarColumn, TextColumn

        from torchplug.callbacks import _rich_columns as columns

        theme = self.theme
        return [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(
                complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                pulse_style=theme.progress_bar_pulse,
            ),
            columns.BatchesColumn(style=theme.batch_progress),
            columns.TimeColumn(style=theme.time),
            columns.SpeedColumn(style=theme.processing_speed),
        ]  # fmt: skip

    def get_metrics(self, trainer: Trainer, pl_module: Module | None = None) -> dict[str, Any]:
        """The base class's metrics with tensors read to Python numbers."""
        return {
            name: value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
            for name, value in super().get_metrics(trainer, pl_module).items()
        }

    # ---------------------------------------------------------------------------------------------------- lifecycle
    def _start(self, trainer: Trainer) -> None:
        if self.is_disabled or self._running:
            return
        from rich import get_console
        from rich.console import Console
        from rich.progress import Progress

        from torchplug.callbacks._rich_columns import MetricsColumn

        console = Console(**self._console_kwargs) if self._console_kwargs else get_console()
        self._reset_ids()
        self._metrics_column = MetricsColumn(self.theme.metrics)
        # Redrawn by this callback (at most refresh_rate times a second), not by a thread of rich's.
        self.progress = Progress(
            *self.configure_columns(trainer), self._metrics_column, console=console, auto_refresh=False
        )
        self.progress.start()
        self._running = True

    def _stop(self) -> None:
        if self.progress is not None and self._running:
            self.progress.stop()  # draws the final state
        self._running = False

    def _refresh(self, hard: bool = False) -> None:
        if self.progress is None or not self._running:
            return
        if hard or self._refresh_due():
            self._last_refresh = time.monotonic()
            self.progress.refresh()

    def _refresh_due(self) -> bool:
        """Whether the next redraw may happen now (at most ``refresh_rate`` a second)."""
        rate = self._refresh_rate
        return rate > 0 and time.monotonic() - self._last_refresh >= 1 / rate

    def _new_or_reset(
        self, task_id: TaskID | None, total: float, description: str, keep: bool = False
    ) -> TaskID:
        """The task ``task_id`` started over (or a new task when there is none, or the old one is to stay)."""
        assert self.progress is not None
        total_or_none = None if total == float("inf") else total
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        if task_id is None or keep:
            return self.progress.add_task(description, total=total_or_none)
        self.progress.reset(task_id, total=total_or_none, description=description, visible=True)
        return task_id

    def _advance(self, task_id: TaskID | None, completed: int) -> None:
        if self.progress is not None and self._running and task_id is not None:
            self.progress.update(task_id, completed=completed)
            self._refresh()

    def _hide(self, task_id: TaskID | None) -> None:
        if self.progress is not None and self._running and task_id is not None:
            self.progress.update(task_id, visible=False)

    def _show_metrics(self, trainer: Trainer, pl_module: Module) -> None:
        if self.is_disabled or self._metrics_column is None:
            return
        theme = self.theme
        texts = []
        for name, value in self.get_metrics(trainer, pl_module).items():
            if not isinstance(value, str):
                try:
                    value = f"{value:{theme.metrics_format}}"
                except (TypeError, ValueError):
                    value = str(value)
            texts.append(f"{name}: {value}")
        self._metrics_column.text = theme.metrics_text_delimiter.join(texts)

    def _epoch_description(self, trainer: Trainer) -> str:
        description = f"Epoch {trainer.current_epoch}"
        max_epochs = getattr(trainer, "max_epochs", None)
        if max_epochs is not None and max_epochs > 0:
            description += f"/{max_epochs - 1}"
        return description.ljust(len(self.validation_description))  # the bars start in one column

    def on_sanity_check_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._start(trainer)

    def on_sanity_check_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._hide(self.val_sanity_progress_bar_id)
        self._refresh(hard=True)

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._start(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self.is_disabled or self.progress is None:
            return
        self.train_progress_bar_id = self._new_or_reset(
            self.train_progress_bar_id,
            self.total_train_batches,
            self._epoch_description(trainer),
            keep=self.leave,
        )
        self._metrics_column.task_id = self.train_progress_bar_id  # the metrics show after the training bar
        self._refresh(hard=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._refresh_due():  # the metrics are read (a device sync for a tensor) only for a redraw
            self._show_metrics(trainer, pl_module)
        self._advance(self.train_progress_bar_id, batch_idx + 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._show_metrics(trainer, pl_module)
        self._refresh(hard=True)

    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._start(trainer)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.is_disabled or self.progress is None or not self.has_dataloader_changed(dataloader_idx):
            return
        total = self.total_val_batches_current_dataloader
        if trainer.sanity_checking:
            self.val_sanity_progress_bar_id = self._new_or_reset(
                self.val_sanity_progress_bar_id, total, self.sanity_check_description
            )
        else:
            self.val_progress_bar_id = self._new_or_reset(
                self.val_progress_bar_id, total, self.validation_description
            )
        self._refresh(hard=True)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: Module,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        task = self.val_sanity_progress_bar_id if trainer.sanity_checking else self.val_progress_bar_id
        self._advance(task, batch_idx + 1)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if getattr(trainer, "stage", None) == "fit":
            if not trainer.sanity_checking:
                self._hide(
                    self.val_progress_bar_id
                )  # the training bar goes on; its metrics now show validation's
            self._show_metrics(trainer, pl_module)
        self._refresh(hard=True)
        self.reset_dataloader_idx_tracker()

    def _evaluation_batch_start(self, kind: str, dataloader_idx: int) -> None:
        """A ``test`` or ``predict`` batch: its bar started over for the next dataloader (or made)."""
        if self.is_disabled or self.progress is None or not self.has_dataloader_changed(dataloader_idx):
            return
        name = f"{kind}_progress_bar_id"
        total = getattr(self, f"total_{kind}_batches_current_dataloader")
        setattr(self, name, self._new_or_reset(getattr(self, name), total, getattr(self, f"{kind}_description")))
        self._refresh(hard=True)

    def on_test_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._start(trainer)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluation_batch_start("test", dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: Module,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._advance(self.test_progress_bar_id, batch_idx + 1)

    def on_test_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._refresh(hard=True)
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._start(trainer)

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluation_batch_start("predict", dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: Module,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._advance(self.predict_progress_bar_id, batch_idx + 1)

    def on_predict_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._refresh(hard=True)
        self.reset_dataloader_idx_tracker()

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        self._stop()


__all__ = ["RichProgressBar", "RichProgressBarTheme"]
