"""What a failed process leaves behind, and which failure of many is the one to show.

When one rank fails, the others fail soon after with communication errors ("Connection reset by peer"); those
are consequences, not causes. Every process we supervise records its failure in an error file; the launcher
reads them all, picks the root cause (the earliest failure that is not a communication error; a signal counts
as a cause) and prints only that one.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from dataclasses import asdict, dataclass

from torchplug import ProcessFailedError

# Words in the messages of errors that only say "a peer went away" (gloo, NCCL, the TCP store).
_COMMUNICATION_MARKERS = (
    "gloo",
    "nccl",
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "tcpstore",
    "socket timeout",
    "connection refused",
)


@dataclass(frozen=True)
class Failure:
    """One process's failure: who, when, what, and whether it is only a consequence of another's."""

    rank: int
    pid: int
    time: float
    summary: str
    traceback: str = ""
    secondary: bool = False

    def report(self) -> str:
        text = f"rank {self.rank} (pid {self.pid}) {self.summary}"
        if self.traceback:
            text += "; its traceback:\n" + self.traceback.rstrip()
        return text


def is_communication_error(exc: BaseException) -> bool:
    """True for errors that a collective raises because another process stopped."""
    try:
        import torch.distributed as dist

        if isinstance(exc, getattr(dist, "DistError", ())):
            return True
    except ImportError:  # pragma: no cover - torch without distributed
        pass
    if isinstance(exc, ProcessFailedError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in message for marker in _COMMUNICATION_MARKERS)


def from_exception(rank: int, exc: BaseException) -> Failure:
    return Failure(
        rank=rank,
        pid=os.getpid(),
        time=time.time(),
        summary=f"raised {type(exc).__name__}: {exc}".rstrip(": "),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        secondary=is_communication_error(exc),
    )


def from_exit_code(rank: int, pid: int, returncode: int) -> Failure:
    """A process that ended without an error file: killed by a signal, or ``sys.exit(n)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        summary = f"was killed by {name}"
    else:
        summary = f"exited with code {returncode}"
    return Failure(rank=rank, pid=pid, time=time.time(), summary=summary)


def error_file(error_dir: str, rank: int) -> str:
    return os.path.join(error_dir, f"rank{rank}.json")


def write(error_dir: str, failure: Failure) -> bool:
    """Record ``failure`` atomically; False if it could not be written (then the process prints it itself)."""
    path = error_file(error_dir, failure.rank)
    try:
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as fh:
            json.dump(asdict(failure), fh)
        os.replace(temporary, path)
    except OSError:
        return False
    return True


def read(error_dir: str, rank: int) -> Failure | None:
    try:
        with open(error_file(error_dir, rank)) as fh:
            return Failure(**json.load(fh))
    except (OSError, ValueError, TypeError):
        return None


def root_cause(failures: list[Failure]) -> Failure:
    """The earliest failure that is not a communication error, else the earliest of all."""
    return min(failures, key=lambda f: (f.secondary, f.time))


# A rank that stopped on a signal together with the others (an agreed stop) is not a failure: it leaves this marker
# before it exits with the stop's status, so that its supervisor waits for the others instead of stopping them.
def stop_file(error_dir: str, rank: int) -> str:
    return os.path.join(error_dir, f"rank{rank}.stopped")


def write_stopped(error_dir: str, rank: int, signum: int) -> None:
    try:
        with open(stop_file(error_dir, rank), "w") as fh:
            fh.write(str(signum))
    except OSError:
        pass


def stopped(error_dir: str, rank: int) -> int:
    """The signal ``rank`` stopped on (an agreed stop), or 0."""
    try:
        with open(stop_file(error_dir, rank)) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0
