import subprocess
import sys

import torch


def run(*args):
    return subprocess.run([sys.executable, "-m", "torchplug.cli", *args], capture_output=True, text=True, check=True).stdout


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
    from shutil import which

    exe = which("torchplug", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "plugins"], capture_output=True, text=True, check=True).stdout
    assert "single_device" in out
