"""Run a function in N fresh processes joined by a process group, and collect every rank's result or traceback.

For a backend's own distributed tests (a collective, a sampler, a state that must agree across ranks). Each rank
is a ``spawn``-ed interpreter, so ``fn`` and its arguments must be picklable (defined at module level). The
rendezvous is TCP on a free port of this host. Every process dies with the caller, and all of them are killed at
the timeout, so a test that deadlocks fails instead of hanging the session.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from torchplug._errors import ProcessFailedError
from torchplug.distributed._ports import find_free_port


@dataclass(frozen=True)
class RankResult:
    """What one rank of :func:`run_processes` left: ``value`` (what ``fn`` returned) or ``error``.

    ``error`` is the formatted traceback of what ``fn`` raised, or how the process ended without answering
    ("was killed by SIGKILL", "did not finish within 30 s"); ``None`` when the rank succeeded.
    """

    rank: int
    value: Any = None
    error: str | None = None
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def get(self) -> Any:
        """``value``, or :class:`torchplug.ProcessFailedError` with this rank's traceback."""
        if self.error is not None:
            raise ProcessFailedError(f"rank {self.rank} failed: {self.error.rstrip()}")
        return self.value


def run_processes(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    timeout: float = 60.0,
    backend: str | None = "gloo",
    grace: float = 5.0,
) -> list[RankResult]:
    """Call ``fn(rank, *args, **kwargs)`` in ``world_size`` new processes; one :class:`RankResult` per rank.

    Each process has ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` set and, unless
    ``backend`` is ``None``, has joined a ``torch.distributed`` process group of that backend before ``fn`` runs
    (destroyed after it). ``fn``'s return value must be picklable. When a rank fails, the others get ``grace``
    seconds to finish (they are usually stuck in a collective with it) and are then stopped; when ``timeout``
    seconds have passed, every process still running is killed. Never raises for a failing rank: read
    ``result.error``, or call ``result.get()``.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size!r}: expected at least 1 process")
    try:
        payload = pickle.dumps((fn, tuple(args), dict(kwargs or {})), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # noqa: BLE001 - pickle raises PicklingError, TypeError or AttributeError
        raise TypeError(
            f"run_processes sends fn and its arguments to each new process by pickling them, and that failed "
            f"({type(err).__name__}: {err}): define fn at module level and pass picklable arguments"
        ) from err
    workdir = tempfile.mkdtemp(prefix="torchplug-processes-")
    context = multiprocessing.get_context("spawn")
    port = find_free_port()
    processes = [
        context.Process(
            target=_rank_main,
            args=(rank, world_size, port, backend, timeout, payload, workdir, os.getpid()),
            name=f"torchplug-rank-{rank}",
        )
        for rank in range(world_size)
    ]
    try:
        for process in processes:
            process.start()
        ended_by = _wait(processes, timeout, grace)
        _stop(processes)
        return [_result(rank, process, workdir, ended_by.get(rank)) for rank, process in enumerate(processes)]
    finally:
        _stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(processes: list[Any], timeout: float, grace: float) -> dict[int, str]:
    """Wait for every process; stop the rest after a failure (plus ``grace``) or at the deadline."""
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    while True:
        running = [p for p in processes if p.exitcode is None]
        if not running:
            return {}
        if failed_at is None and any(p.exitcode not in (None, 0) for p in processes):
            failed_at = time.monotonic()
        now = time.monotonic()
        if now >= deadline:
            why = f"did not finish within {timeout:g} s and was killed"
            return {rank: why for rank, p in enumerate(processes) if p.exitcode is None}
        if failed_at is not None and now >= failed_at + grace:
            failed = next(rank for rank, p in enumerate(processes) if p.exitcode not in (None, 0))
            why = f"was stopped {grace:g} s after rank {failed} failed (still running then)"
            return {rank: why for rank, p in enumerate(processes) if p.exitcode is None}
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=0.2)


def _result(rank: int, process: Any, workdir: str, ended_by: str | None) -> RankResult:
    path = os.path.join(workdir, f"rank{rank}.pickle")
    if ended_by is None and os.path.exists(path):
        with open(path, "rb") as fh:
            status, answer = pickle.load(fh)
        if status == "ok":
            return RankResult(rank, value=answer, exitcode=process.exitcode)
        return RankResult(rank, error=answer, exitcode=process.exitcode)
    if ended_by is not None:
        return RankResult(rank, error=ended_by, exitcode=process.exitcode)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code} without returning (os._exit or sys.exit in fn?)"
    return RankResult(rank, error=how, exitcode=code)


def _stop(processes: list[Any]) -> None:
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.kill()  # SIGKILL: a rank stuck inside a collective ignores SIGTERM's handler
    for process in alive:
        process.join(5.0)


def _rank_main(rank: int, world_size: int, port: int, backend: str | None, timeout: float, payload: bytes,
               workdir: str, parent: int) -> None:  # fmt: skip
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the caller
        if os.getppid() != parent:
            os._exit(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )  # fmt: skip
    try:
        fn, args, kwargs = pickle.loads(payload)
        if backend is not None:
            import torch.distributed as dist

            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))
        try:
            answer: tuple[str, Any] = ("ok", fn(rank, *args, **kwargs))
        finally:
            if backend is not None and dist.is_initialized():
                dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - every failure of the rank is its answer
        answer = ("error", traceback.format_exc())
    temporary = os.path.join(workdir, f"rank{rank}.pickle.tmp")
    try:
        with open(temporary, "wb") as fh:
            pickle.dump(answer, fh)
    except Exception:  # noqa: BLE001 - fn returned something that does not pickle
        with open(temporary, "wb") as fh:
            pickle.dump(("error", f"fn returned a value that cannot be pickled:\n{traceback.format_exc()}"), fh)
    os.replace(temporary, os.path.join(workdir, f"rank{rank}.pickle"))


def processes_mentioning(text: str) -> list[str]:
    """``"pid: command line"`` of every live process (zombies left out) whose command line mentions ``text``, this
    process excepted; on Linux, from ``/proc`` (empty elsewhere). A test's ``tmp_path`` is unique to it, so
    ``processes_mentioning(str(tmp_path)) == []`` after a job says that the job left no process behind."""
    found: list[str] = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry}: {cmdline}")
    return found
