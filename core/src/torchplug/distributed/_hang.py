"""Finding a rank that hangs: the supervisor's side of :mod:`torchplug._heartbeat`.

Every supervised rank rewrites ``heartbeat-<rank>.json`` at most once a second while its loop moves, and has
``faulthandler`` registered on SIGUSR2 to dump every thread's Python stack into ``stack-<rank>.txt``. When a rank in
an active phase has not beaten for ``hang_timeout`` seconds, the supervisor (rank 0's watchdog thread under the
launcher, the caller under ``ddp_spawn``) sends SIGUSR2 to every rank, reads the dumps and names the rank that is
not waiting in a collective (a hung rank makes every other rank wait for it, so all heartbeats go stale together;
the stacks tell them apart). The faulthandler dump is written by a C signal handler, so it works while a rank is
blocked inside gloo or NCCL.

Processes started by torchrun or srun have no supervisor of ours: each watches itself (:class:`SelfWatch`, a
thread that reads its own heartbeat). A rank whose main thread is stuck outside a collective reports itself and
exits at once; a rank that only waits in a collective reports that and exits a few seconds later, so that the stuck
rank's report comes first; torchrun (or ``srun --kill-on-bad-exit=1``) then ends the others.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO

import torch

import torchplug
from torchplug import _heartbeat
from torchplug.distributed._failures import Failure

DUMP_SIGNAL = signal.SIGUSR2
#: The default of ``hang_timeout``: longer than any healthy batch, validation batch or checkpoint save should be,
#: and well inside the 30-minute collective timeout.
DEFAULT_TIMEOUT_S = 600.0

# A main thread whose innermost Python frame is here waits for other ranks (a collective, DDP's gradient
# reduction in backward, a barrier) rather than being stuck on its own.
_WAITING = (f"{os.sep}torch{os.sep}distributed{os.sep}", f"{os.sep}torch{os.sep}autograd{os.sep}",
            f"{os.sep}torch{os.sep}nn{os.sep}parallel{os.sep}")  # fmt: skip
_LIBRARY_DIRS = tuple(
    os.path.realpath(p) + os.sep
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
              os.path.dirname(torch.__file__), os.path.dirname(torchplug.__file__)}  # fmt: skip
)
_HEADER = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):$")
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')

_STACK_FILE: IO[str] | None = None


def arm(directory: str, rank: int) -> None:
    """In a supervised rank: beat into ``directory`` and dump the stack there on SIGUSR2."""
    global _STACK_FILE
    _heartbeat.configure(directory, rank)
    if _STACK_FILE is not None:
        return
    try:
        _STACK_FILE = open(_heartbeat.stack_file(directory, rank), "w")  # noqa: SIM115 - kept open for faulthandler
        faulthandler.register(DUMP_SIGNAL, file=_STACK_FILE, all_threads=True)
    except (OSError, AttributeError, ValueError, RuntimeError):  # no SIGUSR2 (Windows), or no folder
        _STACK_FILE = None


@dataclass
class _Rank:
    rank: int
    pid: int
    beat: dict | None = None
    stack: list[tuple[str, int, str]] = field(default_factory=list)  # main thread, innermost first
    dump: str = ""

    @property
    def waiting(self) -> bool:
        return bool(self.stack) and any(marker in self.stack[0][0] for marker in _WAITING)

    def where(self) -> str:
        if not self.stack:
            return "an unknown place (no stack was dumped)"
        path, line, function = self.stack[0]
        text = f"{path}:{line} in {function}"
        own = next((f for f in self.stack if not _is_library(f[0])), None)
        if own is not None and own != self.stack[0]:
            text += f", called from {own[0]}:{own[1]} in {own[2]}"
        return text


class HangWatch:
    """Reads the ranks' heartbeats; :meth:`check` answers a :class:`Failure` naming the hung rank, once."""

    def __init__(self, directory: str, timeout: float) -> None:
        self.directory, self.timeout = directory, timeout
        self.next_check = 0.0
        self.beats: dict[int, dict] = {}

    def check(self, pids: dict[int, int]) -> Failure | None:
        """Call often; looks at the heartbeats about once a second."""
        now = time.monotonic()
        if now < self.next_check or not self.timeout:
            return None
        self.next_check = now + 1.0
        for rank in pids:
            beat = _read_beat(self.directory, rank)
            if beat is not None:  # None also for a record caught half written: keep the one before
                self.beats[rank] = beat
        ranks = {rank: _Rank(rank, pid, self.beats.get(rank)) for rank, pid in pids.items()}
        wall = time.time()
        stale = {
            r.rank: wall - r.beat["time"]
            for r in ranks.values()
            if r.beat is not None and r.beat.get("phase") in _heartbeat.ACTIVE and wall - r.beat["time"] > self.timeout
        }
        if not stale:
            return None
        return self.diagnose(ranks, max(stale.values()))

    def diagnose(self, ranks: dict[int, _Rank], silent_for: float) -> Failure:
        _dump_stacks(self.directory, ranks)
        stuck = [r for r in ranks.values() if r.stack and not r.waiting]
        waiting = [r for r in ranks.values() if r.waiting]
        if len(ranks) == 1 and waiting:  # a rank watching itself: it cannot see the others
            r = waiting[0]
            beat = r.beat or {}
            summary = (
                f"made no progress for {silent_for:.0f} s (hang_timeout={self.timeout:g} s; last heartbeat at epoch "
                f"{beat.get('epoch', '?')}, step {beat.get('step', '?')}, {beat.get('phase', 'no phase')}): it waits "
                f"in a collective at {r.where()}, so another rank is probably stuck (its own report names it). "
                f"Python stack (main thread, most recent call first):\n{r.dump.rstrip()}"
            )
            return Failure(rank=r.rank, pid=r.pid, time=time.time(), summary=summary, secondary=True)

        def progress(r: _Rank) -> tuple[int, float]:
            return (r.beat or {}).get("step", -1), (r.beat or {}).get("time", 0.0)

        culprit = stuck[0] if stuck else min(ranks.values(), key=progress)
        beat = culprit.beat or {}
        summary = (
            f"made no progress for {silent_for:.0f} s (hang_timeout={self.timeout:g} s; its last heartbeat, written at "
            f"most once a second, was at epoch {beat.get('epoch', '?')}, step {beat.get('step', '?')}, "
            f"{beat.get('phase', 'no phase')})"
        )
        if stuck:
            summary += f": it is stuck at {culprit.where()}"
            others = [r for r in stuck if r is not culprit]
            if others:
                summary += "; also not in a collective: " + "; ".join(f"rank {r.rank} at {r.where()}" for r in others)
            if waiting:
                names = ", ".join(str(r.rank) for r in waiting)
                summary += f"; rank{'s' if len(waiting) > 1 else ''} {names} wait{'' if len(waiting) > 1 else 's'} for it in a collective"
        else:
            summary += (
                "; every rank waits in a collective, so they called different collectives or one skipped one: "
                + "; ".join(f"rank {r.rank} at {r.where()}" for r in ranks.values())
            )
        summary += ". Python stacks (main thread, most recent call first):"
        for r in sorted(ranks.values(), key=lambda r: (r is not culprit, r.rank)):
            summary += f"\n--- rank {r.rank} (pid {r.pid})\n" + (r.dump.rstrip() or "  (no stack was dumped)")
        return Failure(rank=culprit.rank, pid=culprit.pid, time=time.time(), summary=summary)


def _read_beat(directory: str, rank: int) -> dict | None:
    try:
        with open(_heartbeat.heartbeat_file(directory, rank)) as fh:
            beat = json.loads(fh.read().strip() or "null")
    except (OSError, ValueError):
        return None
    return beat if isinstance(beat, dict) and isinstance(beat.get("time"), (int, float)) else None


def _dump_stacks(directory: str, ranks: dict[int, _Rank]) -> None:
    """SIGUSR2 to every rank, then read what each one's faulthandler appended to its stack file."""
    offsets = {}
    for r in ranks.values():
        path = _heartbeat.stack_file(directory, r.rank)
        offsets[r.rank] = os.path.getsize(path) if os.path.exists(path) else 0
        try:
            os.kill(r.pid, DUMP_SIGNAL)
        except ProcessLookupError:
            pass
    deadline, sizes = time.monotonic() + 3.0, {}
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = {rank: _size(directory, rank) for rank in ranks}
        if now == sizes and all(now[rank] > offsets[rank] for rank in ranks):
            break  # every dump is there and no longer growing
        sizes = now
    for r in ranks.values():
        try:
            with open(_heartbeat.stack_file(directory, r.rank)) as fh:
                fh.seek(offsets[r.rank])
                text = fh.read()
        except OSError:
            continue
        main = (r.beat or {}).get("main_thread")
        r.dump, r.stack = _main_thread(text, main)


def _size(directory: str, rank: int) -> int:
    try:
        return os.path.getsize(_heartbeat.stack_file(directory, rank))
    except OSError:
        return 0


def _main_thread(text: str, ident: int | None) -> tuple[str, list[tuple[str, int, str]]]:
    """The main thread's block of a faulthandler dump (the current thread's when the main one is not named)."""
    blocks: list[tuple[str, int | None, list[str]]] = []
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            blocks.append((header.group(1), int(header.group(2), 16), [line]))
        elif blocks and line.strip():
            blocks[-1][2].append(line)
    chosen = next((b for b in blocks if ident is not None and b[1] == ident), None)
    chosen = chosen or next((b for b in blocks if b[0] == "Current thread"), None) or (blocks[0] if blocks else None)
    if chosen is None:
        return "", []
    frames = [(m.group(1), int(m.group(2)), m.group(3)) for m in map(_FRAME.match, chosen[2]) if m]
    return "\n".join(chosen[2][1:]), frames


def _is_library(path: str) -> bool:
    return os.path.realpath(path).startswith(_LIBRARY_DIRS) or path.startswith("<")


class SelfWatch:
    """Hang detection in a rank that torchrun or srun started: a daemon thread watching this process's heartbeat."""

    #: How much later than a stuck rank a rank that only waits in a collective ends itself.
    WAITING_DELAY_S = 5.0

    def __init__(self, rank: int, timeout: float) -> None:
        directory = tempfile.mkdtemp(prefix="torchplug-heartbeat-")
        atexit.register(shutil.rmtree, directory, True)
        arm(directory, rank)
        self.rank, self.watch = rank, HangWatch(directory, timeout)
        self.thread = threading.Thread(target=self._run, name="torchplug-hang-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            failure = self.watch.check({self.rank: os.getpid()})
            if failure is not None:
                self._end(failure)

    def _end(self, failure: Failure) -> None:
        sys.stderr.write(f"torchplug: rank {failure.rank} (pid {failure.pid}) {failure.summary}\n")
        sys.stderr.flush()
        _write_torchelastic_error(failure)
        if failure.secondary:
            time.sleep(self.WAITING_DELAY_S)
        sys.stdout.flush()
        os._exit(1)


_SELF_WATCH: SelfWatch | None = None


def watch_self(rank: int, timeout: float | None) -> None:
    """Start :class:`SelfWatch` in this process, once (later stages reuse it)."""
    global _SELF_WATCH
    if timeout and _SELF_WATCH is None:
        _SELF_WATCH = SelfWatch(rank, timeout)


def _write_torchelastic_error(failure: Failure) -> None:
    """torchrun's error file, so that its failure summary shows the report (not only "exitcode 1")."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": f"rank {failure.rank} (pid {failure.pid}) {failure.summary}",
                          "extraInfo": {"py_callstack": "", "timestamp": str(int(failure.time))}}}  # fmt: skip
    try:
        with open(path, "w") as fh:
            json.dump(record, fh)
    except OSError:
        pass
