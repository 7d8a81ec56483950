"""The profiler interface: actions started and stopped by name, a report written at the end of each stage."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("torchplug.profilers")

# characters that are not safe in a file name on some platform; action names carry '/', ':' and the like
_UNSAFE = re.compile(r"[\\/:*?\"<>|\n\r\t]")


class Profiler:
    """Base class of the profilers: subclasses implement ``start(action)`` and ``stop(action)`` and may return a
    report from ``summary()``.

    The Trainer calls ``setup(stage, local_rank, log_dir)`` at the start of each stage and ``describe()`` then
    ``teardown(stage)`` at its end. ``describe()`` writes ``summary()`` to ``dirpath/<stage>-<filename>[-<rank>].txt``
    (appending) when ``filename`` is given, else logs it on local rank 0. ``dirpath`` defaults to ``trainer.log_dir``.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._output_file: TextIO | None = None
        self._write_stream: Callable[[str], Any] | None = None
        self._local_rank: int | None = None
        self._stage: str | None = None
        self._lightning_module: Any = None  # the module of the running stage, set by the loop before setup

    def start(self, action_name: str) -> None:
        """Begin recording ``action_name``."""
        raise NotImplementedError(f"{type(self).__name__} must implement start(action_name)")

    def stop(self, action_name: str) -> None:
        """End recording ``action_name``."""
        raise NotImplementedError(f"{type(self).__name__} must implement stop(action_name)")

    def summary(self) -> str:
        """The report of what was recorded; empty when there is nothing to say."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """Record the enclosed block as ``action_name``: ``with profiler.profile("load data"): ...``."""
        try:
            self.start(action_name)
            yield action_name
        finally:
            self.stop(action_name)

    @property
    def local_rank(self) -> int:
        return self._local_rank or 0

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer when ``stage`` starts; ``local_rank`` is None in a single-process run."""
        self._stage = stage
        self._local_rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def describe(self) -> None:
        """Write ``summary()`` to the output file, or log it, then close the file (``teardown``).

        Profilers can be used without a Trainer: calling this directly writes the report as the Trainer would."""
        self._open_stream()
        report = self.summary()
        if report and self._write_stream is not None:
            self._write_stream(report)
        if self._output_file is not None:
            self._output_file.flush()
        self.teardown(stage=self._stage)

    def teardown(self, stage: str | None) -> None:
        """Called by the Trainer when ``stage`` ends: closes the output file."""
        self._write_stream = None
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    def __del__(self) -> None:
        self.teardown(stage=self._stage)

    def __getstate__(self) -> dict[str, Any]:
        # an open file and the running module do not travel (deepcopy, pickling to spawned processes)
        state = dict(self.__dict__)
        state.update(_output_file=None, _write_stream=None, _lightning_module=None)
        return state

    # ---------------------------------------------------------------------------------------------------- output
    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """``<stage>-<filename>-<local rank>-<action><extension>``, each part only when known, made file-safe."""
        parts = [
            self._stage,
            self.filename,
            None if self._local_rank is None else str(self._local_rank),
            action_name,
        ]
        base = "-".join(part for part in parts if part)
        base = re.sub(r"_+", "_", _UNSAFE.sub("_", base)).strip()
        return (base or "profile") + extension

    def _open_stream(self) -> None:
        if self._write_stream is not None:
            return
        if self.filename and self.dirpath:
            os.makedirs(self.dirpath, exist_ok=True)
            self._output_file = open(os.path.join(self.dirpath, self._prepare_filename()), "a")  # noqa: SIM115
            self._write_stream = self._output_file.write
        else:
            self._write_stream = self._log_on_rank_zero

    def _log_on_rank_zero(self, text: str) -> None:
        if not self._local_rank:
            log.info("%s", text)

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        """A report of one section per action: ``Profile stats for: <action> [rank: <r>]`` and its text."""
        lines = [f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"]
        rank = "" if self._local_rank is None else f" rank: {self._local_rank}"
        for action, text in stats.items():
            lines += [f"Profile stats for: {action}{rank}", text]
        return os.linesep.join(lines)


class PassThroughProfiler(Profiler):
    """Records nothing: ``trainer.profiler`` when no ``profiler=`` is given (the loop then binds no timing code)."""

    def start(self, action_name: str) -> None: ...

    def stop(self, action_name: str) -> None: ...
