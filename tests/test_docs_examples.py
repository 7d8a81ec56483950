"""The code of docs/writing-a-backend.md is tested code: each block is marked with where it comes from.

* ``<!-- scaffold: KIND NAME PATH -->``: the file ``torchplug new-backend KIND NAME`` makes (tests/test_scaffold.py
  installs those packages and runs the conformance kit on them);
* ``<!-- file: PATH -->``: a file of this repository (examples/torchplug-localsgd, trained with and run through the
  kit by tests/test_third_party_backends.py);
* ``<!-- example: PATH -->``: a test file of a backend package, run here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchplug import _scaffold

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "writing-a-backend.md"
EXAMPLES = [("accelerator", "host"), ("strategy", "allreduce"), ("precision", "static"), ("environment", "jobsched")]


def _blocks(kind: str) -> list[tuple[str, str]]:
    pattern = re.compile(rf"<!-- {kind}: ([^>]+?) -->\n```[a-z]*\n(.*?)```", re.S)
    return pattern.findall(DOCS.read_text())


@pytest.mark.parametrize(("kind", "name"), EXAMPLES)
def test_each_kinds_worked_example_is_what_new_backend_makes(kind, name):
    made = _scaffold.files(kind, name)
    shown = {marker.split()[2]: block for marker, block in _blocks("scaffold") if marker.startswith(f"{kind} {name} ")}
    module = f"src/torchplug_{name}/__init__.py"
    assert module in shown, f"docs/writing-a-backend.md shows no <!-- scaffold: {kind} {name} {module} --> block"
    for path, block in shown.items():
        assert block == made[path], f"the docs' {path} of the {kind} example is not what new-backend makes"


def test_the_local_sgd_example_is_the_example_package():
    files = _blocks("file")
    assert files, "docs/writing-a-backend.md shows no <!-- file: ... --> block"
    for path, block in files:
        assert block == (ROOT / path).read_text(), f"the docs' copy of {path} differs from the file"


def test_the_kit_line_is_the_one_new_backend_writes():
    [(path, block)] = [(p, b) for p, b in _blocks("example") if p == "tests/test_conformance.py"]
    assert block in _scaffold.files("precision", "static")[path]


def test_the_run_processes_example_passes(tmp_path):
    [(path, block)] = [(p, b) for p, b in _blocks("example") if p == "tests/test_collectives.py"]
    (tmp_path / "test_collectives.py").write_text(block)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_collectives.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:]
