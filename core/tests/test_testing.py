"""``torchplug.testing.subprocess_env``: a Python child process imports what the test process imports."""

from __future__ import annotations

import os
import subprocess
import sys

from torchplug.testing import subprocess_env


def _child_finds(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = f"import {module}; print({module}.__file__)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_package_on_the_parents_sys_path_only_is_found_by_the_child(tmp_path, monkeypatch):
    """As with wheels installed by ``pip install --target DIR`` and found through ``PYTHONPATH`` or ``sys.path``."""
    (tmp_path / "only_here").mkdir()
    (tmp_path / "only_here" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.syspath_prepend(os.path.relpath(tmp_path))  # relative, as a runner may insert it
    monkeypatch.delenv("PYTHONPATH", raising=False)

    assert _child_finds("only_here", dict(os.environ)).returncode != 0  # what a bare environment gives
    found = _child_finds("only_here", subprocess_env())
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(tmp_path / "only_here" / "__init__.py")
    assert str(tmp_path) in subprocess_env()["PYTHONPATH"].split(os.pathsep)  # made absolute


def test_folders_given_come_first_and_variables_are_set(tmp_path):
    env = subprocess_env(tmp_path, TORCHPLUG_EXAMPLE="1")
    entries = env["PYTHONPATH"].split(os.pathsep)
    assert entries[0] == str(tmp_path) and env["TORCHPLUG_EXAMPLE"] == "1"
    assert len(entries) == len(set(entries))
    # the interpreter's own folders are left to the interpreter
    assert not any(entry.endswith("site-packages") for entry in entries)
