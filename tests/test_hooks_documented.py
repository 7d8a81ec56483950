"""Every hook spec appears in docs/ with its exact signature (regenerate with docs/make_hooks_reference.py)."""

import inspect
from pathlib import Path

import pytest

from torchplug import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"
SPECS = [f for name, f in vars(hookspecs).items() if name.startswith("torchplug_") and callable(f)]


def written_signature(function) -> str:
    source = inspect.getsource(function)
    header = source[source.index("def ") + 4 : source.index(':\n    """')]
    return " ".join(header.split()).replace("( ", "(").replace(", )", ")").replace(" )", ")")


def test_there_are_hooks_for_every_phase():
    names = {f.__name__ for f in SPECS}
    for needed in ("torchplug_launch", "torchplug_world", "torchplug_root_device", "torchplug_setup_environment",
                   "torchplug_setup_module", "torchplug_step_ops", "torchplug_all_reduce", "torchplug_barrier",
                   "torchplug_broadcast", "torchplug_save_checkpoint", "torchplug_load_checkpoint",
                   "torchplug_state_dict", "torchplug_load_state_dict", "torchplug_teardown"):  # fmt: skip
        assert needed in names


@pytest.mark.parametrize("spec", SPECS, ids=lambda f: f.__name__)
def test_hook_is_documented_with_its_signature(spec):
    docs = "\n".join(p.read_text() for p in DOCS.glob("**/*.md"))
    assert written_signature(spec) in docs, f"{spec.__name__} is missing from docs/ or its signature changed"


@pytest.mark.parametrize("spec", SPECS, ids=lambda f: f.__name__)
def test_hook_is_typed_and_explained(spec):
    signature = inspect.signature(spec)
    assert signature.return_annotation is not inspect.Signature.empty
    assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values())
    doc = spec.__doc__ or ""
    assert "Called" in doc or "called" in doc or "every rank" in doc.lower()
