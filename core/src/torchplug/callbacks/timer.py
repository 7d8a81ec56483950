"""Timer: how long training, validation and testing take, and a time limit for training."""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

from torchplug._errors import MisconfigurationError
from torchplug._states import RunningStage
from torchplug.callbacks._base import Callback

log = logging.getLogger("torchplug")

_INTERVALS = ("step", "epoch")
_DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")


class Timer(Callback):
    """Measures the time spent in the training, validation and test loops, and stops training once ``duration``
    of training time has passed (checked after each training batch, or each epoch with ``interval="epoch"``, and
    at the start of ``fit`` for a resumed run whose time is already used up). The elapsed time is saved in
    checkpoints, so a resumed run continues counting from there.

    Args:
        duration: the training time limit: ``"DD:HH:MM:SS"``, a ``datetime.timedelta`` or a dict of timedelta's
            keywords (``{"hours": 12}``); ``None`` (the default) measures without a limit.
        interval: ``"step"`` or ``"epoch"``: when the limit is checked.
        verbose: log when the limit stops training.

    ``Timer(duration="00:12:00:00")`` stops training after 12 hours; ``timer.time_elapsed("validate")`` is the
    seconds spent validating.
    """

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:  # fmt: skip
        super().__init__()
        self._duration = _seconds(duration)
        if interval not in _INTERVALS:
            raise MisconfigurationError(
                f"Unsupported parameter value `Timer(interval={interval!r})`. Possible choices are: "
                f"{', '.join(_INTERVALS)}"
            )
        self._interval = str(interval)
        self._verbose = verbose
        self._start_time: dict[RunningStage, float | None] = dict.fromkeys(RunningStage)
        self._end_time: dict[RunningStage, float | None] = dict.fromkeys(RunningStage)
        self._offset = 0.0  # training seconds of the run this one resumes

    def start_time(self, stage: str = RunningStage.TRAINING) -> float | None:
        """When ``stage`` (``"train"``, ``"validate"``, ``"test"``) last started (``time.monotonic()``), or None."""
        return self._start_time[RunningStage(stage)]

    def end_time(self, stage: str = RunningStage.TRAINING) -> float | None:
        """When ``stage`` last ended (``time.monotonic()``), or None while it runs or before it ran."""
        return self._end_time[RunningStage(stage)]

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        """Seconds spent in ``stage`` (for training, including those of the run resumed from)."""
        start, end = self.start_time(stage), self.end_time(stage)
        offset = self._offset if RunningStage(stage) == RunningStage.TRAINING else 0.0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = RunningStage.TRAINING) -> float | None:
        """Seconds left of ``duration`` for ``stage``, or None without a duration."""
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    # ---------------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.TRAINING)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time[RunningStage.TRAINING] = time.monotonic()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.VALIDATING)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time[RunningStage.VALIDATING] = time.monotonic()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.TESTING)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time[RunningStage.TESTING] = time.monotonic()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._duration is not None:  # a resumed run's time may be used up already
            self._stop_if_out_of_time(trainer)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._interval == "step" and self._duration is not None:
            self._stop_if_out_of_time(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._stop_if_out_of_time(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage.value: self.time_elapsed(stage) for stage in RunningStage}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict.get("time_elapsed", {}).get(RunningStage.TRAINING.value, 0.0)

    # ---------------------------------------------------------------------------------------------------- helpers
    def _start(self, stage: RunningStage) -> None:
        self._start_time[stage], self._end_time[stage] = time.monotonic(), None

    def _stop_if_out_of_time(self, trainer: Any) -> None:
        assert self._duration is not None
        should_stop = self.time_elapsed() >= self._duration
        if trainer.world_size > 1:  # rank 0's clock decides, so that every rank stops at the same step
            should_stop = bool(trainer.broadcast(should_stop))
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            elapsed = timedelta(seconds=int(self.time_elapsed()))
            log.info("Time limit reached. Elapsed time is %s. Signaling Trainer to stop.", elapsed)


def _seconds(duration: str | timedelta | dict[str, int] | None) -> float | None:
    if duration is None:
        return None
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    if isinstance(duration, dict):
        try:
            return timedelta(**duration).total_seconds()
        except TypeError as err:
            raise MisconfigurationError(
                f"`Timer(duration={duration!r})` is not a valid duration: {err}; use timedelta's keywords "
                "(weeks, days, hours, minutes, seconds, ...)"
            ) from None
    if isinstance(duration, str):
        match = _DURATION.fullmatch(duration.strip())
        if match is None:
            raise MisconfigurationError(
                f"`Timer(duration={duration!r})` is not a valid duration. Expected a string in the format "
                "DD:HH:MM:SS (days, hours, minutes, seconds), e.g. '00:12:00:00'."
            )
        days, hours, minutes, seconds = (int(part) for part in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    raise MisconfigurationError(
        f"`Timer(duration={duration!r})`: expected a 'DD:HH:MM:SS' string, a datetime.timedelta, a dict of "
        "timedelta's keywords or None"
    )
