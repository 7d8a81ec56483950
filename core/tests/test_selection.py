"""Backend arguments that are not names: a number equal to a known precision is that precision, anything else is
refused naming the argument, the value and what is installed."""

from __future__ import annotations

from typing import Any

import pytest

from torchplug import MisconfigurationError, Trainer
from torchplug.registry import installed_names
from torchplug.testing import QUIET


@pytest.mark.parametrize(("given", "expected"), [(16.0, "16-mixed"), (32.0, "32-true"), (64, "64-true"), ("bf16", "bf16-mixed")])
def test_a_number_equal_to_a_known_precision_is_that_precision(given: Any, expected: str) -> None:
    if expected not in installed_names("precision"):
        pytest.skip(f"{expected} is not installed")
    assert Trainer(**QUIET, accelerator="cpu", precision=given).precision == expected


@pytest.mark.parametrize(
    ("argument", "value", "shown", "kind"),
    [
        ("precision", 16.5, "precision=16.5", "precision"),
        ("precision", True, "precision=True", "precision"),
        ("precision", "16.0", "precision='16.0'", "precision"),
        ("precision", None, "precision=None", "precision"),
        ("strategy", 3.5, "strategy=3.5", "strategy"),
        ("strategy", ["ddp"], "strategy=['ddp']", "strategy"),
        ("accelerator", 3.5, "accelerator=3.5", "accelerator"),
        ("accelerator", 0, "accelerator=0", "accelerator"),
        ("plugins", [42], "plugins=[42]", "environment"),
        ("plugins", 4.0, "plugins=4.0", "environment"),
        ("plugins", [None], "plugins=[None]", "environment"),
    ],
)
def test_values_that_are_not_names_are_refused_naming_what_exists(argument: str, value: Any, shown: str, kind: str) -> None:
    with pytest.raises(MisconfigurationError) as error:
        Trainer(**QUIET, **{"accelerator": "cpu", argument: value})
    message = str(error.value)
    assert message.startswith(shown), message
    assert all(name in message for name in installed_names(kind)), message  # what would work is listed
