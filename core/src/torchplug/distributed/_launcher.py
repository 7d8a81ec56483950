"""``python train.py`` becomes N processes: rank 0 re-runs the user's command for the other local ranks and
supervises them, so that no failure leaves a hang or an orphan.

The guarantees, and how they are kept:

* A child that raises records its traceback in an error file and exits without printing it; one that is killed
  leaves its exit signal. Rank 0 picks the root cause (:mod:`torchplug.distributed._failures`) and reports it once, as
  the message of the :class:`torchplug.ProcessFailedError` its ``fit`` raises.
* A watchdog thread in rank 0 polls the children. When one fails it stops the others (SIGTERM, then SIGKILL)
  and raises the error in rank 0's main thread. If that thread is stuck in C++ (a collective or rendezvous that
  cannot finish) and does not stop within ``TORCHPLUG_GRACE`` seconds (10), the watchdog prints the report
  and ends the process with exit code 1.
* Children die with rank 0, even by SIGKILL: each is started through a tiny bootstrap that sets
  ``PR_SET_PDEATHSIG`` (Linux) before ``exec``-ing the user's command, and watches its parent's pid as well.
* A stop on a signal (:mod:`torchplug._stopping`) is agreed by every rank, so they all exit with the stop's status
  after the same step; each child leaves a marker first, and the watchdog does not take that exit for a failure.
* A rank that hangs is named: every rank beats into the error folder while its loop moves; when one has been silent
  for ``hang_timeout`` seconds the watchdog dumps every rank's Python stack (faulthandler on SIGUSR2), reports the rank
  that is not waiting in a collective, and ends the job (:mod:`torchplug.distributed._hang`).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from torchplug import MisconfigurationError, ProcessFailedError, _stopping
from torchplug.distributed import _failures, _hang
from torchplug.distributed._failures import Failure

ENV_LAUNCHER_PID = "TORCHPLUG_LAUNCHER_PID"
ENV_ERROR_DIR = "TORCHPLUG_ERROR_DIR"
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")

# Run by each child before the user's command: die with the launcher, then become the user's command.
_BOOTSTRAP = """\
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(os.environ["TORCHPLUG_LAUNCHER_PID"]):
    os._exit(1)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


def _grace_s() -> float:
    return float(os.environ.get("TORCHPLUG_GRACE", "10"))


# ==================================================================================================== the command
_OPTIONS_WITH_VALUE = set("WX")  # -W arg, -X arg; -c and -m end the interpreter options


def rerun_command() -> list[str]:
    """The arguments (after the interpreter) that re-run this process's command: a script, ``-m`` or ``-c``."""
    if hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules or sys.argv[0] in ("", "-"):
        raise MisconfigurationError(
            "strategy='ddp' starts the other processes by re-running your command, and this session (an "
            "interactive prompt, a notebook or a script read from stdin) cannot be re-run: run a script "
            "(python train.py), or use strategy='ddp_spawn', which pickles the model instead"
        )
    orig = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    head: list[str] = []
    i = 1
    while i < len(orig):
        arg = orig[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            script = orig[i + 1] if arg == "--" else arg
            main_file = getattr(sys.modules.get("__main__"), "__file__", None)
            if main_file and os.path.exists(main_file):
                script = os.path.abspath(main_file)  # absolute, so a later os.chdir does not lose it
            head.append(script)
            break
        letters = arg[1:]
        if arg.startswith("--"):  # --check-hash-based-pycs value, or flags like --version
            head.append(arg)
            if arg == "--check-hash-based-pycs" and i + 1 < len(orig):
                head.append(orig[i + 1])
                i += 1
        elif letters[0] in "cm":
            head.extend([arg, orig[i + 1]] if len(letters) == 1 else [arg])
            break
        else:
            head.append(arg)
            # combined flags (-uB), or one that takes a value attached (-Wignore) or as the next argument (-W x)
            for j, letter in enumerate(letters):
                if letter in "cm":
                    rest = letters[j + 1 :]
                    if not rest:
                        head.append(orig[i + 1])
                    return head + sys.argv[1:]
                if letter in _OPTIONS_WITH_VALUE:
                    if j == len(letters) - 1 and i + 1 < len(orig):
                        head.append(orig[i + 1])
                        i += 1
                    break
        i += 1
    return head + sys.argv[1:]


# ==================================================================================================== rank 0
class _AsyncProcessFailed(ProcessFailedError):
    """Raised in rank 0's main thread by the watchdog (``PyThreadState_SetAsyncExc`` makes it with no argument)."""

    supervisor: _Supervisor | None = None

    def __init__(self, *args: Any) -> None:
        supervisor = type(self).supervisor
        if not args and supervisor is not None:
            supervisor._acknowledged.set()
            args = (supervisor.report(),)
        super().__init__(*args)


# Printed as "torchplug.ProcessFailedError: rank 1 ...", wherever in the user's code it lands.
_AsyncProcessFailed.__module__ = "torchplug"
_AsyncProcessFailed.__name__ = _AsyncProcessFailed.__qualname__ = "ProcessFailedError"


class _Supervisor:
    """Starts and watches the children of this process; one per process, living as long as they do."""

    def __init__(self, commands: list[tuple[int, list[str], dict[str, str]]], own_rank: int, exit_timeout: float,
                 hang_timeout: float | None = None):  # fmt: skip
        self.own_rank = own_rank
        self.exit_timeout = exit_timeout
        self.error_dir = tempfile.mkdtemp(prefix="torchplug-launch-")
        self._hang = _hang.HangWatch(self.error_dir, hang_timeout or 0.0)
        self._commands = commands
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._failure: Failure | None = None
        self._decided = threading.Event()
        self._acknowledged = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = False  # we are ending the children ourselves: their exits are not failures
        self._main_handles_it = False  # rank 0's main thread is reporting the failure itself
        self._exiting = False  # the interpreter is shutting down: the watchdog reports and exits
        self._main_failed = False
        self._main_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._run, name="torchplug-watchdog", daemon=True)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def _run(self) -> None:
        # Children are started from this thread: PR_SET_PDEATHSIG fires when the thread that forked a child
        # ends, and this thread lives exactly as long as the children do.
        try:
            for rank, argv, env in self._commands:
                env = {**env, ENV_LAUNCHER_PID: str(os.getpid()), ENV_ERROR_DIR: self.error_dir}
                self._children[rank] = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, *argv], env=env)
        except BaseException as err:  # noqa: BLE001 - handed to the thread that called start()
            self._start_error = err
            self._stop_children()
            self._started.set()
            return
        self._started.set()
        self._watch()

    def _watch(self) -> None:
        pids = {rank: child.pid for rank, child in self._children.items()}
        pids[self.own_rank] = os.getpid()
        while True:
            codes = {rank: child.poll() for rank, child in self._children.items()}
            failed = [r for r, code in codes.items() if code not in (None, 0) and not self.stopped(r)]
            if not self._stopping and failed:
                self._on_child_failure()
                return
            if all(code is not None for code in codes.values()):
                return
            hung = self._hang.check(pids) if not self._stopping else None
            if hung is not None:
                self._on_hang(hung)
                return
            time.sleep(0.1)

    def stopped(self, rank: int) -> bool:
        """Whether child ``rank`` ended by a stop every rank agreed on (not a failure)."""
        return bool(_failures.stopped(self.error_dir, rank))

    def alive(self) -> bool:
        return any(child.poll() is None for child in self._children.values())

    # ------------------------------------------------------------------------------------------------ failures
    def _child_failures(self) -> list[Failure]:
        failures = []
        for rank, child in self._children.items():
            if child.returncode not in (None, 0):
                recorded = _failures.read(self.error_dir, rank)
                failures.append(recorded or _failures.from_exit_code(rank, child.pid, child.returncode))
        return failures

    def _decide(self, own: Failure | None) -> Failure:
        with self._lock:
            if self._failure is None:
                self._failure = _failures.root_cause(self._child_failures() + ([own] if own else []))
                self._decided.set()
            return self._failure

    def report(self) -> str:
        failure = self._failure
        return failure.report() if failure is not None else "a process of the job failed"

    def _on_child_failure(self) -> None:
        # Others usually fail within a moment (their peer is gone): wait briefly so the root cause is chosen
        # among all of them, not just the first one polled.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        self._decide(None)
        self._end_job()

    def _on_hang(self, failure: Failure) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = failure
                self._decided.set()
        self._end_job(grace=0.0)  # a hung rank cannot stop gracefully; its stack is dumped: kill

    def _end_job(self, grace: float = 5.0) -> None:
        """A failure is decided: stop the children and make rank 0's main thread raise it (or end the process)."""
        self._stop_children(grace)
        with self._lock:
            main_handles_it, exiting = self._main_handles_it, self._exiting
        if main_handles_it:  # rank 0's main thread raises (raised) the report itself
            return
        if exiting:
            self._die()
        _AsyncProcessFailed.supervisor = self
        _raise_in_thread(self._main_thread, _AsyncProcessFailed)
        if not self._acknowledged.wait(_grace_s()):
            with self._lock:
                if self._main_handles_it:
                    return
            self._die(f"rank {self.own_rank} did not stop within {_grace_s():g} s; ending it. ")

    def _die(self, prefix: str = "") -> None:
        sys.stderr.write(f"torchplug.ProcessFailedError: {prefix}{self.report()}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)

    def _stop_children(self, grace: float = 5.0) -> None:
        self._stopping = True
        children = [c for c in self._children.values() if c.poll() is None]
        for child in children:
            _signal(child, signal.SIGTERM if grace else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child, signal.SIGKILL)
                child.wait()
        shutil.rmtree(self.error_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ rank 0's side
    def run_main(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` in rank 0; any failure anywhere becomes one exception here, naming the root cause."""
        if not self.alive() and self._failure is None and not self._stopping:
            raise ProcessFailedError(
                "the other processes of this job have already finished their script, so this process cannot run "
                "another distributed stage: every process must run the same sequence of fit/validate/test calls"
            )
        try:
            return function()
        except _stopping.Stopped:
            # Every rank agreed to stop after this step: the children are exiting too; give them the time to.
            self._wait_for_children(max(60.0, _grace_s()))
            raise
        except BaseException as exc:
            with self._lock:
                self._main_handles_it = True
            if isinstance(exc, _AsyncProcessFailed):
                own = None
            else:
                own = _failures.from_exception(self.own_rank, exc)
                if own.secondary and not self._decided.is_set():
                    # a peer's failure shows here first; wait for the watchdog to see which peer it was
                    self._decided.wait(_grace_s())
            failure = self._decide(own)
            self._stop_children()
            _restore_environment()
            if own is not None and failure is own:
                raise
            raise ProcessFailedError(failure.report()) from None

    def _wait_for_children(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.alive() and time.monotonic() < deadline and self._failure is None:
            time.sleep(0.05)
        if self.alive() and self._failure is None:
            self._stop_children()

    def at_exit(self) -> None:
        """The interpreter is ending: wait for the children to finish their script (or end them)."""
        with self._lock:
            self._exiting = True
            decided = self._decided.is_set()
        if decided:  # the watchdog is handling (or handled) a failure
            self._thread.join()
            return
        if self._main_failed:
            self._stop_children()
            return
        deadline = time.monotonic() + self.exit_timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            self._stop_children()
            sys.stderr.write(
                f"torchplug: rank {self.own_rank} finished, and the other local ranks were still running "
                f"{self.exit_timeout:g} s later; they were stopped\n"
            )
            os._exit(1)
        self._thread.join()
        # Every child is gone; if the watchdog decided a failure it reported from (and removed) the folder itself.
        if not self._decided.is_set():
            shutil.rmtree(self.error_dir, ignore_errors=True)


def _signal(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        child.send_signal(signum)
    except ProcessLookupError:
        pass


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


_SUPERVISOR: _Supervisor | None = None
_SAVED_ENVIRONMENT: dict[str, str | None] = {}


def _restore_environment() -> None:
    for key, value in _SAVED_ENVIRONMENT.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _SAVED_ENVIRONMENT.clear()


def launch(
    function: Callable[[], Any],
    *,
    num_processes: int,
    num_nodes: int = 1,
    node_rank: int = 0,
    main_address: str = "127.0.0.1",
    main_port: int,
    exit_timeout: float = 1800.0,
    extra_env: dict[str, str] | None = None,
    hang_timeout: float | None = None,
) -> Any:
    """Start local ranks 1..N-1 by re-running this process's command, then run ``function`` as local rank 0.

    The children run the whole script, so later ``fit``/``test`` calls meet them again; this process keeps
    them under its watchdog (:func:`run_supervised`) for as long as they live. With ``hang_timeout`` (seconds) the
    watchdog also ends the job when a rank's loop has not moved for that long, naming the rank and where it is.
    """
    global _SUPERVISOR
    if _SUPERVISOR is not None and (_SUPERVISOR.alive() or _SUPERVISOR._failure is None):
        return _SUPERVISOR.run_main(function)
    command = rerun_command()
    world_size = num_processes * num_nodes
    common = {
        "MASTER_ADDR": main_address,
        "MASTER_PORT": str(main_port),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(num_processes),
        "NODE_RANK": str(node_rank),
        **(extra_env or {}),
    }
    commands = []
    for local_rank in range(1, num_processes):
        rank = node_rank * num_processes + local_rank
        env = {**os.environ, **common, "RANK": str(rank), "LOCAL_RANK": str(local_rank)}
        commands.append((rank, command, env))
    own_rank = node_rank * num_processes
    # From now on this process is local rank 0 of a started job: later Trainers find it so and launch nothing.
    for key, value in {**common, "RANK": str(own_rank), "LOCAL_RANK": "0"}.items():
        _SAVED_ENVIRONMENT.setdefault(key, os.environ.get(key))
        os.environ[key] = value
    supervisor = _Supervisor(commands, own_rank, exit_timeout, hang_timeout)
    _hang.arm(supervisor.error_dir, own_rank)
    supervisor.start()
    _SUPERVISOR = supervisor
    _install_exit_handlers(supervisor)
    return supervisor.run_main(function)


def supervising() -> bool:
    """True in a process that launched children with :func:`launch`."""
    return _SUPERVISOR is not None


def run_supervised(function: Callable[[], Any]) -> Any:
    assert _SUPERVISOR is not None
    return _SUPERVISOR.run_main(function)


def _install_exit_handlers(supervisor: _Supervisor) -> None:
    previous = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        supervisor._main_failed = True
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(supervisor.at_exit)


# ==================================================================================================== the children
_CHILD_GUARDS = False


def launched_child() -> bool:
    """True in a process started by :func:`launch` (or by the spawn launcher)."""
    return ENV_LAUNCHER_PID in os.environ and str(os.getpid()) != os.environ[ENV_LAUNCHER_PID]


def run_child(function: Callable[[], Any], rank: int) -> Any:
    """Run ``function`` in a child: a failure is recorded for the launcher, which prints it (once)."""
    _install_child_guards(rank)
    try:
        return function()
    except _stopping.Stopped as stop:  # an agreed stop: the launcher waits for every rank instead of failing the job
        error_dir = os.environ.get(ENV_ERROR_DIR)
        if error_dir:
            _failures.write_stopped(error_dir, rank, stop.signum)
        raise
    except BaseException as exc:
        if not isinstance(exc, SystemExit):  # sys.exit(n) is reported by its exit code
            _record(rank, exc)
        raise


_RECORDED: list[BaseException] = []


def _record(rank: int, exc: BaseException) -> None:
    error_dir = os.environ.get(ENV_ERROR_DIR)
    if error_dir and not any(exc is r for r in _RECORDED) and _failures.write(error_dir, _failures.from_exception(rank, exc)):
        _RECORDED.append(exc)


def _install_child_guards(rank: int) -> None:
    global _CHILD_GUARDS
    if _CHILD_GUARDS:
        return
    _CHILD_GUARDS = True
    launcher = int(os.environ[ENV_LAUNCHER_PID])
    if os.environ.get(ENV_ERROR_DIR):
        _hang.arm(os.environ[ENV_ERROR_DIR], rank)
    previous = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        _record(rank, exc)
        if not any(exc is recorded for recorded in _RECORDED):  # could not hand it to the launcher: say it here
            previous(exc_type, exc, tb)

    sys.excepthook = excepthook

    def watch_parent() -> None:  # PR_SET_PDEATHSIG's stand-in where it does not exist
        while True:
            time.sleep(1.0)
            if os.getppid() != launcher:
                os._exit(1)

    threading.Thread(target=watch_parent, name="torchplug-parent-watch", daemon=True).start()
