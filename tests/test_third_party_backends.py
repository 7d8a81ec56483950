"""Third-party backends for real: throwaway packages with their own pyproject.toml and entry points are built and
installed with pip into a temporary target, then selected by name in a fresh interpreter.

The worked example in docs/writing-a-backend.md is the ``torchplug-probe`` package below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "torchplug-probe"
version = "1.2.3"
dependencies = ["torchplug"]

[project.entry-points."torchplug.strategies"]
probe = "torchplug_probe:ProbeStrategy"

[project.entry-points."torchplug.precisions"]
probe-precision = "torchplug_probe:ProbePrecision"
"""

PROBE_MODULE = '''
"""A strategy and a precision plugin that record every hook call they answer."""

import torch

from torchplug import hookimpl
from torchplug.precision import Precision
from torchplug.strategies import Strategy

CALLS = []


class ProbeStrategy(Strategy):
    def __init__(self, probe_scale: float = 1.0):
        self.probe_scale = probe_scale

    @hookimpl
    def torchplug_setup_environment(self, trainer):
        CALLS.append("setup_environment")

    @hookimpl
    def torchplug_wrap_module(self, trainer, module):
        CALLS.append("wrap_module")
        return module

    @hookimpl
    def torchplug_all_reduce(self, trainer, tensor, op):
        CALLS.append(f"all_reduce:{op}")
        return tensor * self.probe_scale

    @hookimpl
    def torchplug_teardown(self, trainer):
        CALLS.append("teardown")


class ProbePrecision(Precision):
    @hookimpl(wrapper=True)
    def torchplug_forward(self, trainer, stage, args):
        CALLS.append(f"forward:{stage}")
        return (yield)

    @hookimpl
    def torchplug_backward(self, trainer, loss, optimizer):
        CALLS.append("backward")
        loss.backward()
        return True

    @hookimpl
    def torchplug_state_dict(self, trainer):
        return {"probe": {"calls": len(CALLS)}}
'''

BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "torchplug-broken"
version = "0.0.1"

[project.entry-points."torchplug.strategies"]
broken = "torchplug_broken:BrokenStrategy"
"""

BROKEN_MODULE = 'raise ImportError("needs libfoo 3, found libfoo 2")\n'

TWIN_PYPROJECT = PROBE_PYPROJECT.replace('name = "torchplug-probe"', 'name = "torchplug-probe-twin"').replace(
    'probe-precision = "torchplug_probe:ProbePrecision"', ""
)


def _package(root: Path, pyproject: str, module_name: str, module: str) -> Path:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    (root / f"{module_name}.py").write_text(textwrap.dedent(module))
    return root


def _install(target: Path, *packages: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *map(str, packages)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip


def _run(target: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("third_party")
    probe = _package(base / "probe", PROBE_PYPROJECT, "torchplug_probe", PROBE_MODULE)
    broken = _package(base / "broken", BROKEN_PYPROJECT, "torchplug_broken", BROKEN_MODULE)
    target = base / "site"
    _install(target, probe, broken)
    return target


SELECT_PROBE = """
    import json, torch, torchplug, torchplug_probe
    from torchplug.testing import QUIET, BoringModel, regression_loader
    trainer = torchplug.Trainer(strategy="probe", precision="probe-precision", probe_scale=2.0, max_steps=2, **QUIET)
    class Logged(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("synced", torch.tensor(1.5), sync_dist=True, reduce_fx="max")
            return loss
    trainer.fit(Logged(), regression_loader(32, 8))
    checkpoint = trainer._dump_checkpoint(weights_only=False)
    print(json.dumps({"calls": torchplug_probe.CALLS, "synced": float(trainer.callback_metrics["synced"]),
                      "strategy": trainer.strategy_name, "plugins": checkpoint["plugins"]}))
"""


def test_installed_backend_is_selected_by_name_and_its_hooks_run(installed):
    result = _run(installed, SELECT_PROBE)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    calls = out["calls"]
    assert calls[0] == "setup_environment" and calls[-1] == "teardown"
    assert "wrap_module" in calls and calls.count("forward:train") == 2 and calls.count("backward") == 2
    assert "all_reduce:max" in calls
    assert out["synced"] == 3.0  # the option probe_scale=2.0 reached the plugin's constructor
    assert out["strategy"] == "probe" and "probe" in out["plugins"]


def test_broken_backend_is_reported_and_the_others_keep_working(installed):
    result = _run(
        installed,
        """
        import traceback, torchplug
        from torchplug.testing import QUIET
        try:
            torchplug.Trainer(strategy="broken", **QUIET)
        except torchplug.PluginLoadError as err:
            print("ERROR:", err)
            print("CAUSE:", repr(err.__cause__))
            print("TRACEBACK-HAS-MODULE:", "torchplug_broken.py" in "".join(traceback.format_exception(err)))
        trainer = torchplug.Trainer(strategy="probe", **QUIET)
        print("OK:", trainer.strategy_name)
        """,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the strategy 'broken' from distribution 'torchplug-broken' 0.0.1 failed to import" in out
    assert "needs libfoo 3, found libfoo 2" in out
    assert "CAUSE: ImportError" in out and "TRACEBACK-HAS-MODULE: True" in out
    assert "OK: probe" in out


def test_cli_lists_and_checks_installed_backends(installed):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    run = [sys.executable, "-m", "torchplug.cli", "plugins"]
    listing = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert "probe" in listing and "torchplug-probe" in listing and "1.2.3" in listing
    assert "torchplug_broken" not in listing  # listing reads metadata only; nothing is imported
    checked = subprocess.run([*run, "--check"], env=env, capture_output=True, text=True, check=True).stdout
    broken_row = next(line for line in checked.splitlines() if line.strip().startswith("broken"))
    assert "no: ImportError: needs libfoo 3" in broken_row
    probe_row = next(line for line in checked.splitlines() if line.strip().startswith("probe "))
    assert "yes" in probe_row


def test_two_distributions_claiming_one_name_are_both_named(installed, tmp_path):
    twin = _package(tmp_path / "twin", TWIN_PYPROJECT, "torchplug_probe_twin", "")
    target = tmp_path / "site"
    _install(target, twin)
    env_path = f"{installed}{os.pathsep}{target}"
    result = subprocess.run(
        [sys.executable, "-c", "import torchplug; from torchplug.testing import QUIET; torchplug.Trainer(strategy='probe', **QUIET)"],
        env={**os.environ, "PYTHONPATH": env_path}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "claimed by 2 installed distributions" in result.stderr
    assert "torchplug-probe 1.2.3" in result.stderr and "torchplug-probe-twin 1.2.3" in result.stderr


def test_hook_tracing_prints_each_call_with_its_plugin(installed):
    env = {**os.environ, "PYTHONPATH": str(installed), "TORCHPLUG_TRACE_HOOKS": "1"}
    code = (
        "import torchplug; from torchplug.testing import QUIET, BoringModel, regression_loader;"
        "torchplug.Trainer(strategy='probe', max_steps=1, **QUIET).fit(BoringModel(), regression_loader(16, 8))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[torchplug hook] torchplug_wrap_module -> torchplug._defaults, strategy:probe" in result.stderr
    assert "[torchplug hook] torchplug_backward ->" in result.stderr  # per-step hooks are traced too
