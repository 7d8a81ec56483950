"""``conformance(kind, name)``: the conformance suite of one installed backend, as a pytest test class.

Checks that only read the backend (its hooks against the specs, discovery, its availability probe) run in the
test process. Everything that trains runs in a worker process (:mod:`._worker`) started by the kit: one for the
one-process checks and the combination matrix, one job for the two-process checks, and one job for each check
that makes a rank fail. Each check has a deadline; at the deadline the worker's whole process session is killed,
the check fails naming what it was doing, and a new worker runs the checks that remain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from torchplug import registry

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: each xdist worker runs its own batches
    fcntl = None  # type: ignore[assignment]
from torchplug._errors import MisconfigurationError, PluginLoadError
from torchplug._plugins import check_plugin
from torchplug.testing._checks import MATRIX, TWO_PROCESSES, injected_message

_JOB_VARIABLE = "TORCHPLUG_KIT_JOB"
_CHEAP_S = 3.0  # longest an availability probe may take: accelerator="auto" runs every installed one

# check id -> (batch, docstring); the order is the order of the tests
_SINGLE = "single"
_MULTI = "multi"


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str
    name: str
    trainer_kwargs: tuple[tuple[str, Any], ...]
    environ: Callable[[], dict[str, str]] | dict[str, str] | None
    timeout: float

    @property
    def key(self) -> str:
        return json.dumps([self.kind, self.name, list(self.trainer_kwargs)], default=str)


@dataclasses.dataclass
class Outcome:
    status: str  # passed, failed, skipped
    message: str = ""
    detail: Any = None

    def report(self) -> None:
        if self.status == "skipped":
            pytest.skip(self.message)
        if self.status == "failed":
            pytest.fail(self.message, pytrace=False)


def conformance(
    kind: str,
    name: str,
    *,
    trainer_kwargs: dict[str, Any] | None = None,
    environ: Callable[[], dict[str, str]] | dict[str, str] | None = None,
    timeout: float = 120.0,
) -> type:
    """The conformance suite of the installed backend ``name`` of ``kind``, as a test class to assign in a test
    module (any name; ``TestConformance = conformance("strategy", "localsgd")``).

    ``kind`` is ``"accelerator"``, ``"strategy"``, ``"precision"`` or ``"environment"``. The kit picks a
    configuration that runs the backend here (for a strategy or precision: the first available accelerator, the
    CPU first, that accepts it); ``trainer_kwargs`` pins names instead (``{"accelerator": "gpu"}``). ``environ``
    (or a function returning it, called for each worker) adds variables to the workers' environment: a cluster
    environment's tests give the variables its scheduler sets for a job of one process. ``timeout`` is each
    check's deadline in seconds.
    """
    if kind not in registry.GROUPS:
        raise ValueError(f"conformance({kind!r}, {name!r}): kind must be one of {', '.join(registry.GROUPS)}")
    spec = Spec(kind, str(name), tuple(sorted((trainer_kwargs or {}).items())), environ, float(timeout))
    namespace: dict[str, Any] = {
        "__doc__": f"Conformance of the {kind} {name!r} to torchplug's backend contract (torchplug.testing).",
        "__torchplug_conformance__": spec,
        "pytestmark": [pytest.mark.xdist_group(f"torchplug-kit-{kind}-{name}")],
    }
    for test_name, check in _static_checks(kind):
        namespace[test_name] = _static_test(spec, check)
    for check_id in _worker_checks(kind):
        namespace[f"test_{check_id}"] = _worker_test(spec, check_id)
    combinations = [f"{other}:{b.name}" for other in MATRIX[kind] for b in registry.discover(other)]
    namespace["test_combination"] = _combination_test(spec, combinations)
    return type(f"TestConformance_{kind}_{name}".replace("-", "_"), (), namespace)


# ==================================================================================================== tests
def _static_test(spec: Spec, check: Callable[[Spec], None]) -> Callable[..., None]:
    def test(self: Any) -> None:
        check(spec)

    test.__doc__ = check.__doc__
    return test


def _worker_test(spec: Spec, check_id: str) -> Callable[..., None]:
    def test(self: Any, _torchplug_kit: Kit, request: pytest.FixtureRequest) -> None:
        _torchplug_kit.outcome(spec, check_id, _selected(request)).report()

    test.__torchplug_check__ = check_id  # type: ignore[attr-defined]
    return test


def _combination_test(spec: Spec, combinations: list[str]) -> Callable[..., None]:
    @pytest.mark.parametrize("combination", combinations)
    def test_combination(self: Any, combination: str, _torchplug_kit: Kit, request: pytest.FixtureRequest) -> None:
        elsewhere = _run_elsewhere(spec, combination, request)
        if elsewhere is not None:
            pytest.skip(f"this combination runs once per session: in {elsewhere}")
        _torchplug_kit.outcome(spec, f"combination:{combination}", _selected(request)).report()

    return test_combination


def _check_id(item: pytest.Item) -> str | None:
    function = getattr(item, "function", None)
    check = getattr(function, "__torchplug_check__", None)
    if check is not None:
        return check
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "combination" in callspec.params and function.__name__ == "test_combination":
        return f"combination:{callspec.params['combination']}"
    return None


def _selected(request: pytest.FixtureRequest) -> list[str]:
    """The worker checks of this class that this session runs, in order: one worker runs all of a batch."""
    ids = [_check_id(item) for item in request.session.items if getattr(item, "cls", None) is request.cls]
    return [i for i in ids if i is not None]


def _run_elsewhere(spec: Spec, combination: str, request: pytest.FixtureRequest) -> str | None:
    """The test that runs the same pair in this session, when the other backend's suite runs too and owns it.

    The pair (A, B) of A's suite and (B, A) of B's are one configuration (each suite's own default settings
    plus the other backend); the suite whose ``(kind, name)`` sorts first runs it.
    """
    if spec.trainer_kwargs:
        return None
    kind, name = combination.split(":", 1)
    mine = (spec.kind, _primary(spec.kind, spec.name))
    if mine < (kind, name):
        return None
    wanted = f"combination:{mine[0]}:{mine[1]}"
    for item in request.session.items:
        other = getattr(getattr(item, "cls", None), "__torchplug_conformance__", None)
        if (isinstance(other, Spec) and not other.trainer_kwargs and (other.kind, _primary(other.kind, other.name))
                == (kind, name) and _check_id(item) == wanted):  # fmt: skip
            return item.nodeid
    return None


def _primary(kind: str, name: str) -> str:
    try:
        return registry.find(kind, name).name
    except MisconfigurationError:
        return name


def _worker_checks(kind: str) -> list[str]:
    checks = ["selected_by_name", "selected_by_instance", "picklable", "options_reach_the_backend",
              "misspelled_options_are_refused"]  # fmt: skip
    if kind == "accelerator":
        checks.append("auto_accelerator")
    if kind == "environment":
        checks += ["detected", "cluster_info"]
    checks += ["trains", "checkpoint_round_trip", "resumes_mid_epoch_bitwise", "two_fits_in_one_process",
               "teardown_after_failed_setup"]  # fmt: skip
    if kind != "environment":
        checks += ["trains_in_processes", "per_rank_state_survives_checkpoints", "resumes_bitwise_in_processes"]
    if kind == "strategy":
        checks += ["rank_that_raises_is_reported_once", "rank_that_dies_ends_the_job"]
    return checks


def _batch(check: str) -> str:
    if check in ("trains_in_processes", "per_rank_state_survives_checkpoints", "resumes_bitwise_in_processes"):
        return _MULTI
    if check in ("rank_that_raises_is_reported_once", "rank_that_dies_ends_the_job"):
        return f"solo:{check}"
    return _SINGLE


# ==================================================================================================== static checks
def _label(spec: Spec, backend: registry.Backend | None = None) -> str:
    if backend is None:
        return f"the {spec.kind} {spec.name!r}"
    return f"the {spec.kind} {backend.name!r} ({backend.distribution} {backend.version})"


def _backend(spec: Spec) -> registry.Backend:
    try:
        return registry.find(spec.kind, spec.name)
    except MisconfigurationError as err:
        pytest.fail(f"{_label(spec)} is not installed as torchplug finds backends: {err}", pytrace=False)


def _load(spec: Spec) -> Any:
    backend = _backend(spec)
    try:
        return backend.load()
    except PluginLoadError as err:
        cause = err.__cause__
        where = ""
        if cause is not None:
            import traceback

            where = "\n" + "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
        pytest.fail(f"{err}{where}", pytrace=False)


def check_hooks(spec: Spec) -> None:
    """Every ``torchplug_*`` method is a hook of torchplug.hookspecs, decorated, with parameters it passes."""
    cls = _load(spec)
    problems = check_plugin(cls)
    if problems:
        pytest.fail(
            f"{_label(spec, _backend(spec))} breaks the hook contract:\n" + "\n".join(f"  - {p}" for p in problems)
            + "\nHook names, parameters and markers are documented in torchplug.hookspecs (docs/hooks.md).",
            pytrace=False,
        )


def check_listed(spec: Spec) -> None:
    """``torchplug plugins`` lists it under its entry-point group, with its distribution and version."""
    from torchplug import cli

    backend = _backend(spec)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["plugins"])
    section = out.getvalue().split(f"(entry-point group {registry.GROUPS[spec.kind]})", 1)[-1].split("\n\n", 1)[0]
    rows = [line.split() for line in section.splitlines()]
    if not any(row and row[0] == backend.name and backend.distribution in row for row in rows):
        pytest.fail(f"`torchplug plugins` does not list {_label(spec, backend)} under {registry.GROUPS[spec.kind]}:\n"
                    f"{section}", pytrace=False)  # fmt: skip


def check_imports(spec: Spec) -> None:
    """The entry point imports and names a subclass of the kind's base class."""
    from torchplug._selection import _BASES

    cls = _load(spec)
    base = _BASES[spec.kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        pytest.fail(
            f"{_label(spec, _backend(spec))}: the entry point {_backend(spec).value} names {cls!r}, not a subclass "
            f"of {base.__module__}.{base.__name__}; Trainer({spec.kind}=<instance>) refuses instances of other "
            "classes",
            pytrace=False,
        )


def check_probe(spec: Spec) -> None:
    """``is_available()`` (``detect()`` for an environment) returns a bool at once and never raises."""
    cls = _load(spec)
    probe = "detect" if spec.kind == "environment" else "is_available"
    value, seconds = _timed(spec, cls, probe)
    if not isinstance(value, bool):
        pytest.fail(f"{_label(spec, _backend(spec))}: {probe}() returned {value!r}; return True or False", pytrace=False)
    if seconds > _CHEAP_S:
        pytest.fail(
            f"{_label(spec, _backend(spec))}: {probe}() took {seconds:.1f} s. It is called for every installed "
            f"backend{' on every Trainer()' if spec.kind != 'environment' else ''}: check something cheap, import "
            "heavy dependencies only when the backend is chosen",
            pytrace=False,
        )
    if spec.kind == "environment" and not isinstance(getattr(cls, "detect_order", None), int):
        pytest.fail(f"{_label(spec, _backend(spec))}: detect_order must be an int", pytrace=False)


def _timed(spec: Spec, cls: Any, method: str) -> tuple[Any, float]:
    outcome: dict[str, Any] = {}

    def call() -> None:
        start = time.perf_counter()
        try:
            outcome["value"] = getattr(cls, method)()
        except BaseException as err:  # noqa: BLE001
            outcome["error"] = err
        outcome["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=call, name=f"torchplug-kit-{method}", daemon=True)
    thread.start()
    thread.join(max(spec.timeout, _CHEAP_S))
    if thread.is_alive():
        pytest.fail(f"{_label(spec, _backend(spec))}: {method}() did not return within {spec.timeout:g} s", pytrace=False)
    if "error" in outcome:
        err = outcome["error"]
        pytest.fail(
            f"{_label(spec, _backend(spec))}: {method}() raised {type(err).__name__}: {err}. It must never raise: "
            f"return False where the backend cannot run (accelerator='auto' and `torchplug plugins` call it for "
            "every installed backend)",
            pytrace=False,
        )
    return outcome["value"], outcome["seconds"]


def check_device_type(spec: Spec) -> None:
    """The accelerator declares ``device_type`` (the torch device type) and an int ``priority``."""
    cls = _load(spec)
    device_type = getattr(cls, "device_type", None)
    if not isinstance(device_type, str) or not device_type:
        pytest.fail(
            f"{_label(spec, _backend(spec))} declares no device_type: set the class attribute device_type to the "
            "torch device type it computes on (\"cuda\", \"cpu\", \"xla\", ...); other backends accept or refuse it "
            "on that",
            pytrace=False,
        )
    if not isinstance(getattr(cls, "priority", None), int):
        pytest.fail(f"{_label(spec, _backend(spec))}: priority must be an int (accelerator='auto' orders by it)", pytrace=False)


def check_device_count(spec: Spec) -> None:
    """``device_count()`` never raises; it is an int (>= 1 when available) or ``None`` (any number)."""
    cls = _load(spec)
    count, _ = _timed(spec, cls, "device_count")
    available, _ = _timed(spec, cls, "is_available")
    if count is not None and (not isinstance(count, int) or count < 0):
        pytest.fail(f"{_label(spec, _backend(spec))}: device_count() returned {count!r}; expected an int >= 0 or None", pytrace=False)
    if available and count == 0:
        pytest.fail(f"{_label(spec, _backend(spec))}: is_available() is True but device_count() is 0", pytrace=False)


def _static_checks(kind: str) -> list[tuple[str, Callable[[Spec], None]]]:
    checks = [
        ("test_hook_implementations_match_the_hookspecs", check_hooks),
        ("test_listed_by_torchplug_plugins", check_listed),
        ("test_imports", check_imports),
        ("test_availability_probe_is_cheap_and_never_raises", check_probe),
    ]
    if kind == "accelerator":
        checks += [("test_declares_device_type", check_device_type), ("test_device_count", check_device_count)]
    return checks


# ==================================================================================================== workers
class Kit:
    """The session's worker runs and their outcomes (one per check), shared by every conformance class.

    Under pytest-xdist the tests of one backend may land on several workers; ``shared`` is a folder they all see,
    where a batch's outcomes are written under a file lock, so that each batch runs once per session wherever
    its tests run.
    """

    def __init__(self, base: Path, shared: Path | None = None) -> None:
        self.base, self.shared = base, shared
        self.outcomes: dict[tuple[str, str], Outcome] = {}

    def outcome(self, spec: Spec, check: str, selected: list[str]) -> Outcome:
        key = (spec.key, check)
        if key in self.outcomes:
            return self.outcomes[key]
        unavailable = _unavailable(spec)
        if unavailable is not None:  # no worker needed to say so
            return Outcome("skipped", unavailable)
        batch = _batch(check)
        if batch != _SINGLE:  # the one-process worker found out whether two processes can run here
            probe = self.outcome(spec, TWO_PROCESSES, selected)
            if probe.status != "passed":
                return Outcome(probe.status, probe.message)
        todo = [c for c in selected if _batch(c) == batch and (spec.key, c) not in self.outcomes]
        if check not in todo:
            todo.append(check)
        if batch == _SINGLE and (spec.key, TWO_PROCESSES) not in self.outcomes and TWO_PROCESSES not in todo:
            todo.append(TWO_PROCESSES)
        for done, outcome in self._run(spec, batch, todo).items():
            self.outcomes[(spec.key, done)] = outcome
        return self.outcomes[key]

    def _run(self, spec: Spec, batch: str, todo: list[str]) -> dict[str, Outcome]:
        if self.shared is None or fcntl is None:
            return _run_batch(spec, batch, todo, self.base)
        name = hashlib.sha1(f"{spec.key}|{batch}".encode()).hexdigest()[:20]
        store = self.shared / f"{name}.json"
        with open(self.shared / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker running this batch: wait for its outcomes
            try:
                known = json.loads(store.read_text()) if store.exists() else {}
                missing = [c for c in todo if c not in known]
                if missing:
                    for check, outcome in _run_batch(spec, batch, missing, self.base).items():
                        known[check] = dataclasses.asdict(outcome)
                    store.with_suffix(".tmp").write_text(json.dumps(known, default=str))
                    os.replace(store.with_suffix(".tmp"), store)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return {check: Outcome(**outcome) for check, outcome in known.items()}


def _unavailable(spec: Spec) -> str | None:
    """Why the backend cannot run here, when its own probe says so (environments detect in the worker)."""
    if spec.kind == "environment":
        return None
    try:
        backend = registry.find(spec.kind, spec.name)
        available = backend.load().is_available()
    except Exception:  # noqa: BLE001 - the worker reports it, with the traceback
        return None
    if available is False:
        return f"{_label(spec, backend)} is not available on this machine (is_available() is False)"
    return None


def _run_batch(spec: Spec, batch: str, checks: list[str], base: Path) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    pending = list(checks)
    while pending:
        job = _Job(spec, batch, pending, base)
        finished = job.run()
        outcomes.update(finished)
        pending = [c for c in pending if c not in outcomes]
    return outcomes


class _Job:
    """One worker process (and whatever it starts), watched against each check's deadline."""

    def __init__(self, spec: Spec, batch: str, checks: list[str], base: Path) -> None:
        self.spec, self.batch, self.checks = spec, batch, list(checks)
        self.id = uuid.uuid4().hex[:12]
        self.directory = base / f"{spec.kind}-{spec.name}-{batch.replace(':', '-')}-{self.id}"
        self.directory.mkdir(parents=True)
        self.results = self.directory / "results.jsonl"
        self.plan = self.directory / "plan.json"
        self.plan.write_text(json.dumps({
            "kind": spec.kind, "name": spec.name, "trainer_kwargs": dict(spec.trainer_kwargs), "checks": self.checks,
            "workdir": str(self.directory / "work"), "results": str(self.results),
            "processes": 1 if batch == _SINGLE else 2,
        }))  # fmt: skip

    def run(self) -> dict[str, Outcome]:
        environ = self.spec.environ() if callable(self.spec.environ) else dict(self.spec.environ or {})
        env = {**os.environ, **environ, _JOB_VARIABLE: self.id, "PYTHONUNBUFFERED": "1"}
        if env.get("PYTHONPATH"):  # the worker runs where the tests run, but relative entries are made safe
            env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
        with open(self.directory / "stdout.txt", "wb") as out, open(self.directory / "stderr.txt", "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "torchplug.testing._worker", str(self.plan)],
                env=env, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip
            outcomes, interrupted = self._watch(process)
        orphans = _end_job(process, self.id)
        if interrupted is not None:
            outcomes[interrupted[0]] = interrupted[1]
        if self.batch.startswith("solo:"):
            check = self.batch.split(":", 1)[1]
            outcome = outcomes.get(check)
            if outcome is not None and outcome.status == "passed":
                outcomes[check] = self._judge_output(check, orphans)
        return outcomes

    def _watch(self, process: subprocess.Popen[bytes]) -> tuple[dict[str, Outcome], tuple[str, Outcome] | None]:
        outcomes: dict[str, Outcome] = {}
        current: str | None = None
        doing = "starting the worker (importing torch and the backend)"
        deadline = time.monotonic() + self.spec.timeout
        offset = 0
        while True:
            code = process.poll()
            events, offset = _read_events(self.results, offset)
            for event in events:
                if event["event"] == "start":
                    current, doing = event["check"], "starting the check"
                    deadline = time.monotonic() + self.spec.timeout
                elif event["event"] == "progress":
                    doing = event["what"]
                elif event["event"] == "end":
                    outcomes[event["check"]] = self._outcome(event)
                    current = None
            if code is not None:
                if current is not None or (code == 0 and len(outcomes) < len(self.checks)):
                    victim = current or next(c for c in self.checks if c not in outcomes)
                    return outcomes, (victim, self._crashed(code, doing))
                return outcomes, None
            if time.monotonic() > deadline:
                victim = current or next(c for c in self.checks if c not in outcomes)
                _kill_session(process)
                return outcomes, (victim, self._hung(doing))
            time.sleep(0.1)

    def _outcome(self, event: dict[str, Any]) -> Outcome:
        message = event["message"]
        if event["status"] == "failed":
            message = f"{self._label()}: {message}"
        return Outcome(event["status"], message, event.get("detail"))

    def _label(self) -> str:
        try:
            return _label(self.spec, registry.find(self.spec.kind, self.spec.name))
        except MisconfigurationError:
            return _label(self.spec)

    def _hung(self, doing: str) -> Outcome:
        return Outcome("failed", (
            f"{self._label()}: the check did not finish within {self.spec.timeout:g} s (a hang) while it was "
            f"doing: {doing}. Its processes were killed.{self._tail()}"
        ))  # fmt: skip

    def _crashed(self, code: int, doing: str) -> Outcome:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return Outcome("failed", (
            f"{self._label()}: the kit's worker process {how} during this check, while it was doing: {doing}"
            f"{self._tail()}"
        ))  # fmt: skip

    def _tail(self, limit: int = 4000) -> str:
        text = self.output()[-limit:].strip()
        return f"\nThe worker's output ended with:\n{text}" if text else ""

    def output(self) -> str:
        parts = []
        for name in ("stdout.txt", "stderr.txt"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def _judge_output(self, check: str, orphans: list[str]) -> Outcome:
        if orphans:
            return Outcome("failed", (
                f"{self._label()}: after rank 1 failed, process(es) of the job outlived it: {'; '.join(orphans)}. "
                "A failure must end every process of the job (torchplug.distributed.launch does)"
            ))  # fmt: skip
        if check == "rank_that_raises_is_reported_once":
            marker = injected_message(1, 2)
            printed = self.output().count(marker)
            if printed:
                return Outcome("failed", (
                    f"{self._label()}: the failure of rank 1 reached the caller as a ProcessFailedError, and the "
                    f"job's processes also printed it {printed} more time(s) to the terminal: report a rank's "
                    f"failure once (children record it for the launcher; run_started_process does){self._tail()}"
                ))  # fmt: skip
        return Outcome("passed")


def _read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]
    events = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
    return events, offset + len(complete)


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _end_job(process: subprocess.Popen[bytes], job: str) -> list[str]:
    """Wait a moment for the job's processes to end with it; kill and name those that outlive it."""
    deadline = time.monotonic() + 5.0
    while True:
        alive = _job_processes(job)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _kill_session(process)
    return [f"pid {pid} ({command})" for pid, command in alive]


def _job_processes(job: str) -> list[tuple[int, str]]:
    """Processes whose environment carries this job's id (Linux: /proc); empty where that cannot be read."""
    found = []
    needle = f"{_JOB_VARIABLE}={job}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                status = (entry / "stat").read_text().split()
                if status[2] == "Z":  # a zombie is dead; it waits for its parent to read its exit code
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append((int(entry.name), command[:120]))
        except (OSError, IndexError):
            continue
    return found


# ==================================================================================================== pytest
@pytest.fixture(scope="session")
def _torchplug_kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """The conformance kit's workers for this session (see :func:`torchplug.testing.conformance`)."""
    shared = None
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker's basetemp is a folder of the session's one
        shared = tmp_path_factory.getbasetemp().parent / "torchplug-kit-shared"
        shared.mkdir(exist_ok=True)
    return Kit(tmp_path_factory.mktemp("torchplug-kit"), shared)


def pytest_configure(config: pytest.Config) -> None:
    # The kit groups each backend's checks with this marker (pytest-xdist's --dist loadgroup keeps a group on
    # one worker, so its processes run once); registered here too, for --strict-markers without xdist.
    config.addinivalue_line("markers", "xdist_group(name): tests that pytest-xdist runs on one worker")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> Any:
    # A conformance class is collected whatever name it is assigned to (test_conformance = conformance(...)).
    if isinstance(obj, type) and isinstance(getattr(obj, "__torchplug_conformance__", None), Spec):
        return pytest.Class.from_parent(collector, name=name, obj=obj)
    return None

