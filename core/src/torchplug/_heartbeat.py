"""Heartbeats: a supervised rank tells its supervisor, at most once a second, that it is making progress.

The launcher (:mod:`torchplug.distributed._launcher`) and ``ddp_spawn``'s caller watch these files to find a rank
that hangs (:mod:`torchplug.distributed._hang`). Written from the loop's own thread, never from a helper thread, so
a beat means the loop moved: once per training batch and evaluation batch the loop calls :meth:`Heartbeat.__call__`
(a clock read; the file is rewritten when a second has passed), and around checkpoint saves and at the edges of a
stage the phase changes are written at once. A rank counts for hang detection only while its phase is one of
:data:`ACTIVE`: setup (process group, ``prepare_data``), the first batch (compilation, data loader start-up) and the
time between stages are not timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

RECORD_SIZE = 320  # bytes of a heartbeat file (one JSON object, padded with spaces)
#: Phases in which a rank is expected to beat; a rank in another phase is never called hung.
ACTIVE = ("training", "validating", "testing", "predicting", "saving a checkpoint")

# Set in a supervised process by its launcher: the folder its supervisor reads, and this process's rank.
_DIRECTORY: str | None = None
_RANK = 0
_CURRENT: Heartbeat | None = None


def configure(directory: str | None, rank: int) -> None:
    global _DIRECTORY, _RANK
    _DIRECTORY, _RANK = directory, rank


def heartbeat_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"heartbeat-{rank}.json")


def stack_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"stack-{rank}.txt")


class Heartbeat:
    """This rank's heartbeat file; call it once per batch."""

    __slots__ = ("path", "next", "trainer", "phase", "pending", "fd")

    def __init__(self, trainer: Trainer, directory: str, rank: int) -> None:
        self.path = heartbeat_file(directory, rank)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        self.trainer = trainer
        self.phase = "setup"
        self.pending: str | None = None
        self.next = 0.0

    def __call__(self) -> None:
        if self.pending is not None:  # a batch of the phase is done: from now on it is timed
            self.phase, self.pending = self.pending, None
            self.write(time.monotonic())
            return
        now = time.monotonic()
        if now >= self.next:
            self.write(now)

    def enter(self, phase: str) -> None:
        """A phase starts now and is timed from now (a checkpoint save, training again after validation)."""
        self.phase, self.pending = phase, None
        self.write(time.monotonic())

    def begin(self, phase: str) -> None:
        """A phase starts whose first batch is not timed (data loader workers start, the first step compiles):
        it is timed from the end of that batch."""
        self.phase, self.pending = f"starting {phase}", phase
        self.write(time.monotonic())

    def write(self, now: float) -> None:
        self.next = now + 1.0
        trainer = self.trainer
        record = (
            f'{{"time": {time.time()!r}, "phase": {json.dumps(self.phase)}, "step": {trainer.global_step}, '
            f'"epoch": {trainer.current_epoch}, "pid": {os.getpid()}, "main_thread": {threading.main_thread().ident}}}'
        )
        # One write of a fixed-size record in place: no truncation, no rename (a beat costs one syscall). A reader
        # that catches a write half done sees invalid JSON and keeps the beat it had.
        with contextlib.suppress(OSError):
            os.pwrite(self.fd, record.ljust(RECORD_SIZE).encode()[:RECORD_SIZE], 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def start(trainer: Trainer) -> Heartbeat | None:
    """This stage's heartbeat, in a supervised process (None elsewhere: nobody reads it)."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
    if _DIRECTORY is None or not os.path.isdir(_DIRECTORY):
        _CURRENT = None
        return None
    _CURRENT = Heartbeat(trainer, _DIRECTORY, _RANK)
    _CURRENT.write(time.monotonic())
    return _CURRENT


def enter(phase: str) -> str | None:
    """Switch the current heartbeat's phase, timed from now; returns the previous one (None when nothing beats)."""
    current = _CURRENT
    if current is None:
        return None
    previous = current.pending or current.phase
    current.enter(phase)
    return previous


def stop() -> None:
    """The stage is over: between stages a rank is not timed."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.enter("idle")
        _CURRENT.close()
    _CURRENT = None
