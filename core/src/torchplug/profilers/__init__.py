"""Profilers: where a run spends its time, per hook and per phase (``Trainer(profiler="simple")``).

A profiler times *actions*, named as in Lightning: ``[LightningModule]MyModel.training_step``,
``[Callback]ModelCheckpoint.on_train_epoch_end``, ``[LightningDataModule]MyData.setup``, ``run_training_epoch``.
Without a profiler (the default) nothing is timed and the loop binds no timing code at all.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torchplug._errors import MisconfigurationError

log = logging.getLogger("torchplug")


class Profiler:
    """Base class: ``start(action)``/``stop(action)`` and a ``summary()``; the report goes to the ``torchplug``
    logger, or to ``dirpath/filename`` when given (one file per stage, ``<stage>-<filename>.txt``)."""

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None) -> None:
        self.dirpath, self.filename = dirpath, filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._log_dir: str | None = None

    def start(self, action_name: str) -> None:
        raise NotImplementedError

    def stop(self, action_name: str) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        try:
            self.start(action_name)
            yield
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        self._stage, self._local_rank, self._log_dir = stage, local_rank, log_dir
        if self.dirpath is None:
            self.dirpath = log_dir

    def describe(self) -> None:
        """Write the summary of what was timed (at the end of each stage)."""
        report = self.summary()
        if not report:
            return
        if self.filename and self.dirpath is not None:
            name = f"{self._stage}-{self.filename}" if self._stage else self.filename
            if self._local_rank:
                name = f"{name}-{self._local_rank}"
            os.makedirs(self.dirpath, exist_ok=True)
            with open(os.path.join(os.fspath(self.dirpath), f"{name}.txt"), "a") as file:
                file.write(report + "\n")
        elif not self._local_rank:
            log.info("%s", report)

    def teardown(self, stage: str | None) -> None:
        self._stage = stage


class PassThroughProfiler(Profiler):
    """Times nothing: what ``trainer.profiler`` is without ``profiler=``."""

    def start(self, action_name: str) -> None: ...
    def stop(self, action_name: str) -> None: ...

    def summary(self) -> str:
        return ""


class SimpleProfiler(Profiler):
    """Wall time per action: ``recorded_durations[action]`` lists each call's seconds; ``summary()`` is a table of
    calls, mean and total, longest total first, with each action's share of the whole run when ``extended``."""

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None,
                 extended: bool = True) -> None:  # fmt: skip
        super().__init__(dirpath, filename)
        self.extended = extended
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.start_time = time.monotonic()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"profiler: attempted to start {action_name!r}, which is already running")
        self.current_actions[action_name] = time.monotonic()

    def stop(self, action_name: str) -> None:
        end = time.monotonic()
        started = self.current_actions.pop(action_name, None)
        if started is None:
            raise ValueError(f"profiler: attempted to stop {action_name!r}, which was not started")
        self.recorded_durations[action_name].append(end - started)

    def summary(self) -> str:
        if not self.recorded_durations:
            return ""
        total_run = time.monotonic() - self.start_time
        rows = sorted(self.recorded_durations.items(), key=lambda item: -sum(item[1]))
        width = max(len("Action"), *(len(name) for name, _ in rows))
        header = f"{'Action':<{width}} | {'Calls':>8} | {'Mean (s)':>12} | {'Total (s)':>12}"
        if self.extended:
            header += f" | {'Percent':>8}"
        lines = [f"Profiler report ({type(self).__name__})", header, "-" * len(header)]
        for name, durations in rows:
            total = sum(durations)
            line = f"{name:<{width}} | {len(durations):>8} | {total / len(durations):>12.6f} | {total:>12.6f}"
            if self.extended:
                line += f" | {100 * total / total_run if total_run else 0:>7.2f}%"
            lines.append(line)
        return "\n".join(lines)


def make_profiler(profiler: Any) -> Profiler:
    if profiler is None:
        return PassThroughProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str):
        if profiler.lower() == "simple":
            return SimpleProfiler()
        raise MisconfigurationError(
            f"profiler={profiler!r}: torchplug has the 'simple' profiler (or pass a torchplug.profilers.Profiler); "
            "for operator-level traces use torch.profiler around trainer.fit"
        )
    raise MisconfigurationError(f"profiler={profiler!r}: expected 'simple', a torchplug.profilers.Profiler or None")


__all__ = ["PassThroughProfiler", "Profiler", "SimpleProfiler"]
