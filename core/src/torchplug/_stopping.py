"""Stopping a run cleanly on a signal, and picking a restarted job up where it stopped.

SIGTERM (schedulers, ``kill``), SIGINT (Ctrl-C) and the job's requeue signal (SLURM's ``--signal=USR1@90``) do not
end the process where they land. The handler only notes the request; the loop finishes the optimizer step it is in
and asks :class:`StopCheck` at the step boundary. With several processes the request is combined across ranks every
so often (:data:`CHECK_EVERY_S`) with one small ``all_reduce``, so that every rank stops after the same step, whichever
rank (or all of them) got the signal; the number of steps between two combinations is itself agreed from the slowest
rank's step time, so it is the same everywhere. Then the stage raises ``KeyboardInterrupt`` (SIGINT) or
:class:`torchplug.SIGTERMException` (the others), ``on_exception`` runs (``ModelCheckpoint(save_on_exception=True)``
saves there), the loggers are finalized, and the process exits (:class:`Stopped`) with 1 for SIGINT (Lightning's
Ctrl-C) and ``128 + signal`` otherwise (143 for SIGTERM): never 0, which launchers and job scripts read as "done". A
second signal while stopping ends the process at once (``SIG_DFL``).

A job that a scheduler can start again (SLURM requeue, a torchelastic restart when asked for) keeps a record of the
newest checkpoint it saved (:func:`note_saved`); on a stop it saves one if none was saved at that step, SLURM's
environment requeues the job on its requeue signal, and a restarted ``fit`` resumes from the record
(:func:`restart_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import SIGTERMException

if TYPE_CHECKING:
    from torchplug._types import Restart
    from torchplug.trainer import Trainer

#: Combine the stop requests of the ranks about this often (seconds of training between two combinations).
CHECK_EVERY_S = 1.0
_MAX_INTERVAL = 1000  # steps between two combinations, at most
#: Set by a launcher whose own process is not a rank (ddp_spawn's caller): the file it writes when it gets a signal.
ENV_STOP_FILE = "TORCHPLUG_STOP_FILE"


class Stopped(SystemExit):
    """How a stage stopped by a signal ends its process: ``SystemExit`` with the exit status, no traceback."""

    def __init__(self, signum: int) -> None:
        SystemExit.__init__(self, exit_code(signum))
        self.signum = signum


class StoppedOnSignal(Stopped, SIGTERMException):
    """A stop on SIGTERM or the requeue signal: also the :class:`~torchplug.SIGTERMException` that Lightning's
    ``fit`` raises then, so ``except SIGTERMException`` around ``trainer.fit`` catches it as it would there."""


def stopped(signum: int) -> Stopped:
    """The exception that ends a stage stopped by ``signum`` (Ctrl-C's is a plain :class:`Stopped`, exit status 1)."""
    return Stopped(signum) if signum == signal.SIGINT else StoppedOnSignal(signum)


def exit_code(signum: int) -> int:
    """1 for SIGINT (as Lightning exits on Ctrl-C), ``128 + signum`` otherwise (what a shell reports for a kill)."""
    return 1 if signum == signal.SIGINT else 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ==================================================================================================== requests
class _Request:
    """This process's pending stop: which signal, and whether the stage is already shutting down because of it."""

    def __init__(self) -> None:
        self.signum = 0  # 0: none
        self.agreed = 0  # the signal every rank agreed to stop on (another rank may have received it)
        self.requeue_signal = 0
        self.stopping = False  # the stop is under way: a further signal ends the process at once
        self.raised: BaseException | None = None  # what the loop raised for the agreed stop
        self.requeued = False  # SIGTERM is ignored from the requeue on
        self.sigterm = False  # SIGTERM came during the current (or the last) stage: trainer.received_sigterm

    def priority(self, signum: int) -> int:
        """Which of several signals wins when ranks got different ones: the requeue signal, then SIGTERM, SIGINT."""
        if not signum:
            return 0
        if signum == self.requeue_signal:
            return 3
        return 2 if signum != signal.SIGINT else 1


_REQUEST = _Request()


def requested() -> int:
    """The signal this process was asked to stop by (0: none)."""
    return _REQUEST.signum


def sigterm_received() -> bool:
    """Whether this process got SIGTERM during the current stage, or the last one when none runs."""
    return _REQUEST.sigterm


def _handle(signum: int, frame: Any) -> None:
    request = _REQUEST
    if signum == signal.SIGTERM:
        request.sigterm = True
    if request.signum and (request.stopping or signum == request.signum):
        # A second signal: end now, as the signal would have without us.
        _write(f"torchplug: {signal_name(signum)} again: exiting at once, without saving\n")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if request.priority(signum) > request.priority(request.signum):
        request.signum = signum
        who = f"rank {os.environ['RANK']}: " if "RANK" in os.environ else ""
        _write(
            f"torchplug: {who}{signal_name(signum)} received; stopping after the current step "
            f"(send it again to exit at once)\n"
        )
    previous = _PREVIOUS.get(signum)
    if callable(previous) and previous not in (signal.default_int_handler, _handle):
        previous(signum, frame)  # a handler the application installed keeps running (as Lightning chains them)


def _write(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


_PREVIOUS: dict[int, Any] = {}


@contextlib.contextmanager
def handling(signals: tuple[int, ...]) -> Iterator[None]:
    """Turn ``signals`` into stop requests while the block runs (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _REQUEST.sigterm = _REQUEST.signum == signal.SIGTERM  # one still pending from an earlier stage counts
    installed = {}
    for signum in signals:
        if signum in installed or signal.getsignal(signum) is signal.SIG_IGN:
            continue  # a signal the process was told to ignore (nohup, a background job's SIGINT) stays ignored
        try:
            installed[signum] = signal.signal(signum, _handle)
        except (ValueError, OSError):  # not settable on this platform
            continue
    _PREVIOUS.update(installed)
    try:
        yield
    finally:
        for signum, previous in installed.items():
            if signum == signal.SIGTERM and _REQUEST.requeued:
                continue  # the scheduler's SIGTERM follows a requeue: the process is ending, let it end cleanly
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            _PREVIOUS.pop(signum, None)


def stop_signals(trainer: Trainer) -> tuple[int, ...]:
    """SIGINT, SIGTERM and the requeue signal of the job's environment, if it has one."""
    requeue = trainer.hook.torchplug_requeue_signal(trainer=trainer)
    _REQUEST.requeue_signal = int(requeue or 0)
    return (signal.SIGINT, signal.SIGTERM) + ((int(requeue),) if requeue else ())


def is_agreed_stop(exc: BaseException) -> bool:
    """True for the exception the loop raised because every rank agreed to stop (safe for collective saves)."""
    return exc is _REQUEST.raised


def interruption(exc: BaseException) -> int:
    """The signal behind ``exc`` when it is an interruption (a stop, or a KeyboardInterrupt), else 0."""
    if isinstance(exc, SIGTERMException):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    return 0


# ==================================================================================================== the check
class StopCheck:
    """Asked by the loop at every step boundary: should every rank stop here? Bound once per stage.

    One process: the answer is whether a signal came (an attribute read). Several processes: every ``interval``
    steps the ranks all-reduce ``[request, seconds per step]`` with ``max``; the stop is agreed when any rank has a
    request, and the next interval is ``CHECK_EVERY_S`` of the slowest rank's steps, computed from the reduced (so
    identical) values. Between two combinations a step costs a counter decrement.
    """

    __slots__ = ("trainer", "shared", "relay", "countdown", "interval", "since", "due")

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.relay = os.environ.get(ENV_STOP_FILE) or None
        self.shared = trainer.world_size > 1 or self.relay is not None
        self.countdown = self.interval = 1
        self.since = time.monotonic()
        request = _REQUEST
        #: What the loop calls at a step boundary: truthy when every rank is to stop here.
        self.due: Any = self._count_down if self.shared else (lambda: request.signum)

    def _count_down(self) -> bool:
        self.countdown -= 1
        if self.countdown:
            return False
        return self.agree()

    def agree(self) -> bool:
        """Combine the ranks' requests now (every rank must call this at the same point)."""
        request = _REQUEST
        if self.relay is not None and not request.signum and os.path.exists(self.relay):
            with contextlib.suppress(OSError, ValueError):
                with open(self.relay) as fh:
                    request.signum = int(fh.read().strip() or signal.SIGTERM)
        now = time.monotonic()
        per_step = (now - self.since) / self.interval
        code = request.priority(request.signum)
        if self.trainer.world_size > 1:
            reduced = self.trainer.hook.torchplug_all_reduce(
                trainer=self.trainer, tensor=torch.tensor([float(code), per_step], dtype=torch.float64), op="max"
            )
            code, per_step = int(reduced[0].item()), float(reduced[1].item())
        self.interval = self.countdown = max(1, min(_MAX_INTERVAL, int(CHECK_EVERY_S / max(per_step, 1e-9))))
        self.since = time.monotonic()
        if not code:
            return False
        if request.priority(request.signum) != code:  # another rank's signal wins
            request.agreed = {3: request.requeue_signal, 2: signal.SIGTERM, 1: signal.SIGINT}[code]
        else:
            request.agreed = request.signum
        return True

    def stop(self) -> BaseException:
        """The exception the stage raises for the agreed stop (remembered, so callbacks can tell it is agreed)."""
        request = _REQUEST
        signum = request.agreed or request.signum or signal.SIGTERM
        request.agreed, request.stopping = signum, True
        exc: BaseException = KeyboardInterrupt() if signum == signal.SIGINT else SIGTERMException(signum)
        request.raised = exc
        return exc


def finished() -> None:
    """The stage is over. A request it acted on is spent (a later stage, if the application caught the exit, runs
    normally); one it did not act on (the stage ended first) stays pending for the next stage of this process."""
    request = _REQUEST
    if request.stopping:
        request.signum = request.agreed = 0
    request.raised, request.stopping = None, False


# ==================================================================================================== restarts
def restart_info(trainer: Trainer) -> Restart | None:
    return trainer.hook.torchplug_restart_info(trainer=trainer)


def note_saved(trainer: Trainer, path: str) -> None:
    """A full checkpoint was written: in a restartable job, record it as the one a restart resumes from."""
    info = restart_info(trainer)
    if info is None or not trainer.is_global_zero or trainer.stage != "fit":
        return
    record = {"path": os.path.abspath(path), "global_step": trainer.global_step, "epoch": trainer.current_epoch}
    os.makedirs(os.path.dirname(info.record) or ".", exist_ok=True)
    temporary = f"{info.record}.{os.getpid()}.tmp"
    with open(temporary, "w") as fh:
        json.dump(record, fh)
    os.replace(temporary, info.record)


def _read_record(info: Restart) -> dict[str, Any] | None:
    try:
        with open(info.record) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("path"), str) else None


def restart_checkpoint(trainer: Trainer, ckpt_path: Any) -> Any:
    """The checkpoint a restarted job's ``fit`` resumes from: the newest one it recorded before it stopped.

    Every rank gets global rank 0's answer. ``ckpt_path`` (the user's) is kept when this is the job's first run or
    nothing was recorded; otherwise the record wins, and a line says so.
    """
    info = restart_info(trainer)
    if info is None or info.restarts < 1:
        return ckpt_path
    found: str | None = None
    if trainer.is_global_zero:
        record = _read_record(info)
        if record is not None and os.path.isfile(record["path"]):
            found = record["path"]
            instead = f" instead of ckpt_path={os.fspath(ckpt_path)!r}" if ckpt_path is not None else ""
            _print(
                f"torchplug: {info.description} restart {info.restarts}: resuming from {found} (step "
                f"{record.get('global_step')}){instead}"
            )
        else:
            _print(
                f"torchplug: {info.description} restart {info.restarts}: no checkpoint recorded in {info.record}; "
                + ("starting from scratch" if ckpt_path is None else f"resuming from ckpt_path={os.fspath(ckpt_path)!r}")
            )
    if trainer.world_size > 1:
        found = trainer.broadcast(found)
    return found if found is not None else ckpt_path


def forget_restart(trainer: Trainer) -> None:
    """``fit`` finished: the record (and the checkpoint saved only for a restart) must not resume anything again."""
    info = restart_info(trainer)
    if info is None or not trainer.is_global_zero:
        return
    for path in (info.record, info.checkpoint):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def save_for_restart(trainer: Trainer) -> str | None:
    """On a stop in a restartable job: the checkpoint the restart resumes from, saved unless one was at this step.

    Every rank calls this (saving is collective). Returns the path recorded for the restart, or None.
    """
    info = restart_info(trainer)
    if info is None or trainer.stage != "fit" or trainer.lightning_module is None:
        return None
    record = _read_record(info) if trainer.is_global_zero else None
    step = record.get("global_step") if record is not None and os.path.isfile(record["path"]) else None
    if trainer.world_size > 1:
        step = trainer.broadcast(step)
    if step != trainer.global_step:
        trainer.save_checkpoint(info.checkpoint)
        return info.checkpoint
    return record["path"] if record is not None else None


def requeue(trainer: Trainer, signum: int) -> str | None:
    """After a stop on the requeue signal: global rank 0 asks the scheduler to run the job again.

    Every rank calls this: a barrier first (everything is saved and finalized everywhere, because the scheduler ends
    every process right after the requeue), SIGTERM ignored from then on, rank 0 requeues, a barrier again so that no
    rank exits (``srun --kill-on-bad-exit``) before the requeue is done. Returns rank 0's message.
    """
    if not signum or signum != _REQUEST.requeue_signal:
        return None
    trainer.barrier("requeue")
    _REQUEST.requeued = True
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the scheduler's SIGTERM follows the requeue: we are ending
    message = trainer.hook.torchplug_requeue(trainer=trainer) if trainer.is_global_zero else None
    trainer.barrier("requeued")
    return message


def _print(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


__all__ = [
    "CHECK_EVERY_S",
    "ENV_STOP_FILE",
    "StopCheck",
    "Stopped",
    "StoppedOnSignal",
    "exit_code",
    "handling",
    "interruption",
    "is_agreed_stop",
    "requested",
    "restart_checkpoint",
    "sigterm_received",
    "signal_name",
    "stopped",
]
