import subprocess
import sys

import pytest

from torchplug import MisconfigurationError, Trainer, registry
from torchplug.testing import QUIET, subprocess_env


def test_builtin_backends_come_from_the_core_entry_points():
    names = {(b.kind, b.name): b for kind in registry.GROUPS for b in registry.discover(kind)}
    assert names[("accelerator", "cpu")].distribution == "torchplug"
    assert names[("strategy", "single_device")].distribution == "torchplug"
    full = names[("precision", "32-true")]
    assert full.aliases == ("32",) and full.distribution == "torchplug"
    assert names[("precision", "64-true")].aliases == ("64",)
    assert ("precision", "bf16-true") in names and ("precision", "16-true") in names


def test_int_and_str_names_are_the_same():
    assert registry.find("precision", 32) is registry.find("precision", "32")
    assert registry.find("precision", "32").name == "32-true"


def test_unknown_name_lists_installed_names():
    with pytest.raises(MisconfigurationError) as err:
        Trainer(strategy="dpp", **QUIET)
    message = str(err.value)
    assert "strategy='dpp'" in message and "no strategy named 'dpp'" in message
    assert "single_device" in message


@pytest.mark.parametrize(
    ("kind", "name", "package"),
    [("strategy", "ddp2", "torchplug-ddp"), ("precision", "apex", "torchplug-apex"), ("accelerator", "tpu", "torchplug-xla")],
)
def test_project_backend_names_say_what_to_install(kind, name, package, monkeypatch):
    # Pretend nothing but the core is installed for this group, whatever this environment holds.
    core_only = tuple(b for b in registry.discover(kind) if b.distribution == "torchplug")
    monkeypatch.setattr(registry, "discover", lambda k: core_only if k == kind else ())
    with pytest.raises(MisconfigurationError, match=f"pip install {package}"):
        registry.find(kind, name)


def test_selecting_a_backend_does_not_import_the_others():
    code = (
        "import sys, torchplug; from torchplug.testing import QUIET;"
        "torchplug.Trainer(accelerator='cpu', **QUIET);"
        "print(sorted(m for m in sys.modules if m.startswith('torchplug_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "[]", out


def test_backend_options_go_to_the_backend_that_takes_them():
    with pytest.raises(MisconfigurationError, match="unexpected keyword argument.*not_an_option"):
        Trainer(not_an_option=1, **QUIET)
