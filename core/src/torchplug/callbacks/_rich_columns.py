"""The columns of ``RichProgressBar`` (imported only once ``rich`` is known to be installed)."""

from __future__ import annotations

import datetime
from typing import Any

from rich.progress import ProgressColumn, Task
from rich.style import Style
from rich.text import Text


class BatchesColumn(ProgressColumn):
    """``done/total`` batches (``done/--`` for a loader without a length)."""

    def __init__(self, style: str | Style) -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        total = "--" if task.total is None else f"{int(task.total)}"
        return Text(f"{int(task.completed)}/{total}", style=self.style)


class TimeColumn(ProgressColumn):
    """``elapsed • remaining``, redrawn twice a second at most so that it does not flicker."""

    max_refresh = 0.5

    def __init__(self, style: str | Style) -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        remaining = task.time_remaining
        return Text(f"{_clock(elapsed)} • {_clock(remaining)}", style=self.style)


class SpeedColumn(ProgressColumn):
    """Batches per second."""

    def __init__(self, style: str | Style) -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.2f}it/s", style=self.style)


class MetricsColumn(ProgressColumn):
    """The ``prog_bar=True`` metrics after the training bar (``task_id``); the other bars get none.

    ``text`` is set by the callback from the loop's thread; rendering only reads it (no metric is computed here).
    """

    def __init__(self, style: str | Style) -> None:
        super().__init__()
        self.style = style
        self.text = ""
        self.task_id: Any = None

    def render(self, task: Task) -> Text:
        if task.id != self.task_id:
            return Text()
        return Text(self.text, justify="left", style=self.style)


def _clock(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(datetime.timedelta(seconds=int(seconds)))
