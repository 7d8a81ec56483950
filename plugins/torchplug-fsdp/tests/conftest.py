"""Fixtures for torchplug-fsdp's tests; the helpers live in fsdp_test_support.py and fsdp_jobs.py."""

from __future__ import annotations

import pytest
from fsdp_test_support import one_process


@pytest.fixture
def in_process():
    """A one-process fsdp run inside the test process, cleaned up after (see ``one_process``)."""
    with one_process():
        yield
