import subprocess
import sys
from pathlib import Path
from shutil import which

import torch

from torchplug.testing import subprocess_env


def run(*args):
    return subprocess.run([sys.executable, "-m", "torchplug.cli", *args], env=subprocess_env(), capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


def test_plugins_lists_every_group_with_aliases_and_distribution():
    out = run("plugins")
    for title in ("accelerators", "strategies", "precisions", "cluster environments"):
        assert title in out
    row = next(line for line in out.splitlines() if line.strip().startswith("32-true"))
    assert "32" in row.split()[1] and "torchplug" in row and "0.1.0" in row


def test_env_reports_torch_accelerators_and_environment(monkeypatch):
    out = run("env")
    assert f"torch        {torch.__version__}" in out
    assert "cpu" in out and "cluster environment" in out
    assert "float32 matmul precision: highest" in out


def test_console_script_is_installed():
    # next to the interpreter, or in the bin/ of a `pip install --target DIR` folder on the import path
    folders = [Path(sys.executable).parent, *(Path(p) / "bin" for p in sys.path if p)]
    exe = which("torchplug", path=":".join(map(str, folders)))
    assert exe is not None
    out = subprocess.run([exe, "plugins"], env=subprocess_env(), capture_output=True, text=True, check=True).stdout
    assert "single_device" in out
