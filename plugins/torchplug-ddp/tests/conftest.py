"""Fixtures for torchplug-ddp's tests; the helpers live in ddp_test_support.py."""

from __future__ import annotations

import pytest
from ddp_test_support import PYTHON


@pytest.fixture
def python() -> str:
    return PYTHON
