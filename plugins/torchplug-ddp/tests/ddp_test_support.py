"""Helpers for torchplug-ddp's tests: run a script in a fresh interpreter, find processes left behind.

A module of its own (not conftest.py), so that importing it cannot pick up another package's conftest. The core's
tests have the same helpers (core/tests/distributed_test_support.py); this copy keeps the plugin's test suite
independent of the core's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from torchplug.testing import distributed_variable, processes_mentioning, subprocess_env  # noqa: F401 (re-exported)

PYTHON = sys.executable


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.returncode, self.stdout, self.stderr, self.seconds = proc.returncode, proc.stdout, proc.stderr, seconds

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> Ran:
        assert self.returncode == 0, f"exit code {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        return self


def write_script(directory: Path, source: str, name: str = "script.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def clean_environment() -> dict[str, str]:
    """``os.environ`` without the variables of a launcher, a scheduler or an earlier torchplug run, with this
    process's import path (``torchplug.testing.subprocess_env``)."""
    return {k: v for k, v in subprocess_env().items() if not distributed_variable(k)}


def run(argv: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None) -> Ran:
    """Run ``argv`` with a clean distributed environment (no inherited RANK, MASTER_PORT, SLURM_* ...).

    A run that outlives ``timeout`` fails the test (``subprocess.TimeoutExpired``): rank 0 is killed, and the
    processes it started die with it.
    """
    base = clean_environment()
    base["PYTHONWARNINGS"] = "ignore"
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    return Ran(proc, time.monotonic() - start)




