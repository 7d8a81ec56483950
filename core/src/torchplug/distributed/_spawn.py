"""Spawning a job's processes with ``torch.multiprocessing`` and bringing global rank 0's answer home.

Each process runs the pickled ``function``; global rank 0 saves what it returned to a file in a private directory,
which the calling process loads (``weights_only``: tensors and plain data). Failures are chosen and reported the
same way as in :mod:`torchplug.distributed._launcher`: the root cause, once; a rank that hangs is named the same way
(:mod:`torchplug.distributed._hang`).

The calling process is not a rank. A signal it gets (SIGINT, SIGTERM) is handed to the ranks through a file they
look at when they agree on stopping (:data:`torchplug._stopping.ENV_STOP_FILE`), so a Ctrl-C that reaches the
caller and every rank at once is still one request; when every rank has stopped, the caller exits with their status.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from torchplug import MisconfigurationError, ProcessFailedError, _stopping
from torchplug.distributed import _failures, _hang, _launcher

_RESULT = "result.pt"


def serialize(function: Callable[[], Any], start_method: str) -> Callable[[], Any] | bytes:
    """The run as bytes each process unpickles into its own copy (``fork`` copies memory itself).

    Plain pickle on purpose: ``torch.multiprocessing`` would pass CPU tensors through shared memory, and then
    every process would step the *same* parameters. Failing here also means nothing was started.
    """
    if start_method == "fork":
        return function
    try:
        return pickle.dumps(function, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # noqa: BLE001 - pickle raises PicklingError, TypeError or AttributeError
        raise MisconfigurationError(
            f"start_method={start_method!r} sends the model, the data loaders and the Trainer to each new process by "
            f"pickling them, and pickling failed: {type(err).__name__}: {err}. Make them picklable (no lambdas, classes "
            "defined inside functions, open files, locks or generators among their attributes), or use strategy='ddp' "
            "(start_method='popen'), which re-runs your script in each process instead of pickling anything"
        ) from err


def spawn(
    function: Callable[[], Any],
    *,
    num_processes: int,
    num_nodes: int,
    node_rank: int,
    main_address: str,
    main_port: int,
    start_method: str,
    hang_timeout: float | None = None,
) -> tuple[bool, Any]:
    """Run ``function`` in ``num_processes`` new processes; ``(True, answer)`` where this node has global rank 0.

    ``answer`` is what ``function`` returned in global rank 0; it must be tensors and plain Python data. Each
    process starts from this process's random generators (torch's, Python's, NumPy's), as the stage would here: a
    new interpreter's are seeded at random, and then ``seed_everything`` would not make two runs agree.
    """
    payload = serialize(function, start_method)
    generators = _host_generators()
    workdir = tempfile.mkdtemp(prefix="torchplug-spawn-")
    env = {
        "MASTER_ADDR": main_address,
        "MASTER_PORT": str(main_port),
        "WORLD_SIZE": str(num_processes * num_nodes),
        "LOCAL_WORLD_SIZE": str(num_processes),
        "NODE_RANK": str(node_rank),
        _launcher.ENV_LAUNCHER_PID: str(os.getpid()),
        _launcher.ENV_ERROR_DIR: workdir,
        _stopping.ENV_STOP_FILE: os.path.join(workdir, "stop-request"),
    }
    context = None
    try:
        with _stopping.handling((signal.SIGINT, signal.SIGTERM)):
            context = mp.start_processes(
                _entry,
                args=(payload, env, num_processes, node_rank, workdir, generators),
                nprocs=num_processes,
                join=False,
                start_method=start_method,
            )
            _supervise(context.processes, num_processes, node_rank, workdir, hang_timeout)
        path = os.path.join(workdir, _RESULT)
        if not os.path.exists(path):
            if node_rank == 0:  # global rank 0 is local rank 0 here, and it ended without finishing its stage
                process = context.processes[0]
                raise ProcessFailedError(
                    f"rank 0 (pid {process.pid}) exited with code {process.exitcode} without finishing its stage "
                    "(sys.exit() or os._exit() in the stage, or in code that runs when the script is imported by a "
                    "spawned process: guard it with if __name__ == '__main__')"
                )
            return False, None
        try:
            return True, torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise MisconfigurationError(
                "the spawned processes returned objects other than tensors and plain Python data, which are not "
                f"loaded back (a result file is data, not code): {str(err).splitlines()[0]}"
            ) from err
    finally:
        if context is not None:
            _stop(context.processes)
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(processes: list[Any], num_processes: int, node_rank: int, workdir: str,
               hang_timeout: float | None = None) -> None:  # fmt: skip
    """Wait for the processes; raise the root cause of a failure or a hang, or :class:`Stopped` when they stopped."""
    ranks = {node_rank * num_processes + i: p for i, p in enumerate(processes)}
    hang = _hang.HangWatch(workdir, hang_timeout or 0.0)
    relayed = False
    while True:
        running = [p for p in processes if p.exitcode is None]
        if any(p.exitcode not in (None, 0) and not _failures.stopped(workdir, r) for r, p in ranks.items()):
            break
        if not running:
            signums = [_failures.stopped(workdir, r) for r in ranks]
            if any(signums):  # every rank stopped together after the same step: exit as they did
                raise _stopping.stopped(max(signums, key=lambda s: (s != signal.SIGINT, s)))
            return
        if _stopping.requested() and not relayed:
            relayed = True
            with open(os.path.join(workdir, "stop-request.tmp"), "w") as fh:
                fh.write(str(_stopping.requested()))
            os.replace(os.path.join(workdir, "stop-request.tmp"), os.path.join(workdir, "stop-request"))
        hung = hang.check({r: p.pid for r, p in ranks.items()})
        if hung is not None:
            _stop(processes, grace=0.0)  # a hung rank cannot stop gracefully; its stack is dumped: kill
            raise ProcessFailedError(hung.report())
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=0.5)
    deadline = time.monotonic() + 1.0  # let the consequences of the failure show, to choose among them
    while time.monotonic() < deadline and any(p.exitcode is None for p in processes):
        time.sleep(0.05)
    failures = []
    for local_rank, process in enumerate(processes):
        if process.exitcode not in (None, 0):
            rank = node_rank * num_processes + local_rank
            failures.append(
                _failures.read(workdir, rank) or _failures.from_exit_code(rank, process.pid, process.exitcode)
            )
    _stop(processes)
    raise ProcessFailedError(_failures.root_cause(failures).report())


def _stop(processes: list[Any], grace: float = 5.0) -> None:
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate() if grace else process.kill()
    deadline = time.monotonic() + grace
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _host_generators() -> tuple[Any, ...]:
    numpy_state = None
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        numpy_state = np.random.get_state()
    return torch.get_rng_state(), random.getstate(), numpy_state


def _restore_generators(generators: tuple[Any, ...]) -> None:
    torch_state, python_state, numpy_state = generators
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    if numpy_state is not None:
        import numpy as np

        np.random.set_state(numpy_state)


def _entry(local_rank: int, payload: Callable[[], Any] | bytes, env: dict[str, str], num_processes: int, node_rank: int,
           workdir: str, generators: tuple[Any, ...]) -> None:  # fmt: skip
    if hasattr(signal, "SIGKILL") and os.uname().sysname == "Linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the caller
    rank = node_rank * num_processes + local_rank
    os.environ.update(env)
    os.environ["RANK"], os.environ["LOCAL_RANK"] = str(rank), str(local_rank)
    function = pickle.loads(payload) if isinstance(payload, bytes) else payload
    _restore_generators(generators)
    result = _launcher.run_child(function, rank)
    if rank == 0:
        path = os.path.join(workdir, _RESULT)
        torch.save(result, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
