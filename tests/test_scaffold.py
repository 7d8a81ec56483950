"""``torchplug new-backend``: a package of each kind, made in a temporary folder, installs and passes the conformance
kit as made (its code is the worked example of docs/writing-a-backend.md for that kind: tests/test_docs_examples.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchplug import _scaffold

# The worked examples of the docs: (kind, name) made by `torchplug new-backend KIND NAME`.
EXAMPLES = [("accelerator", "host"), ("strategy", "allreduce"), ("precision", "static"), ("environment", "jobsched")]

# Checks that must pass (not be skipped) for each kind of the scaffold: the backend really ran.
MUST_PASS = {
    "common": ["hook_implementations_match_the_hookspecs", "listed_by_torchplug_plugins", "imports",
               "selected_by_name", "selected_by_instance", "picklable", "misspelled_options_are_refused", "trains",
               "checkpoint_round_trip", "resumes_mid_epoch_bitwise", "two_fits_in_one_process",
               "teardown_after_failed_setup"],
    "accelerator": ["declares_device_type", "device_count", "auto_accelerator", "combination[strategy:single_device]",
                    "combination[precision:32-true]"],
    "strategy": ["options_reach_the_backend", "trains_in_processes", "per_rank_state_survives_checkpoints",
                 "resumes_bitwise_in_processes", "rank_that_raises_is_reported_once", "rank_that_dies_ends_the_job",
                 "combination[accelerator:cpu]", "combination[precision:32-true]"],
    "precision": ["options_reach_the_backend", "trains_in_processes", "per_rank_state_survives_checkpoints",
                  "resumes_bitwise_in_processes", "combination[accelerator:cpu]", "combination[strategy:ddp]"],
    "environment": ["detected", "cluster_info", "combination[strategy:ddp]"],
}  # fmt: skip


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torchplug.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_a_new_backend_of_each_kind_installs_and_passes_the_conformance_kit(tmp_path):
    packages = []
    for kind, name in EXAMPLES:
        made = _cli("new-backend", kind, name, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        packages.append(tmp_path / f"torchplug-{name}")
        assert f"created torchplug-{name}:" in made.stdout and "tests/test_conformance.py" in made.stdout
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), *map(str, packages)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # their tests exactly as made, with torchplug found as this process finds it (an installed wheel may be on
    # PYTHONPATH: make test-wheels); importlib mode because each package's file is tests/test_conformance.py. The
    # rootdir is named: pytest 9 otherwise roots the session in the first package (its pyproject.toml) and gives the
    # other packages' tests node ids under that package's name.
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--import-mode=importlib", "-q", "-rA",
         f"--rootdir={tmp_path}", f"--basetemp={tmp_path / 'kit'}", *(f"{p.name}/tests" for p in packages)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    passed = {line.split(" ", 1)[1].strip() for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    for kind, name in EXAMPLES:
        for check in MUST_PASS["common"] + MUST_PASS[kind]:
            test = f"::TestConformance::test_{check}"
            assert any(node.startswith(f"torchplug-{name}/") and node.endswith(test) for node in passed), (
                f"torchplug-{name}'s {test} did not pass:\n{result.stdout[-6000:]}"
            )


def test_new_backend_refuses_bad_names_and_existing_folders(tmp_path):
    bad = _cli("new-backend", "strategy", "My Strategy", cwd=tmp_path)
    assert bad.returncode == 1
    assert "name 'My Strategy': use lowercase letters and digits" in bad.stderr
    assert _cli("new-backend", "strategy", "mine", cwd=tmp_path).returncode == 0
    again = _cli("new-backend", "strategy", "mine", cwd=tmp_path)
    assert again.returncode == 1 and "torchplug-mine exists already" in again.stderr
    wrong_kind = _cli("new-backend", "optimizer", "mine", cwd=tmp_path)
    assert wrong_kind.returncode == 2 and "invalid choice: 'optimizer'" in wrong_kind.stderr


def test_the_package_layout_names_and_entry_point(tmp_path):
    files = _scaffold.files("precision", "loss-scaler")
    assert set(files) == {"pyproject.toml", "README.md", "src/torchplug_loss_scaler/__init__.py",
                          "tests/test_conformance.py"}  # fmt: skip
    pyproject = files["pyproject.toml"]
    assert 'name = "torchplug-loss-scaler"' in pyproject
    assert '[project.entry-points."torchplug.precisions"]\nloss-scaler = "torchplug_loss_scaler:LossScalerPrecision"' in pyproject
    assert 'dependencies = ["torchplug>=0.1,<0.2"]' in pyproject
    assert "def __init__(self, loss_scaler_loss_scale: float = 1.0)" in files["src/torchplug_loss_scaler/__init__.py"]
    assert 'conformance("precision", "loss-scaler")' in files["tests/test_conformance.py"]
