"""Every test here compares torchplug with Lightning: skipped, with the reason, where the oracle is absent."""

import pytest

from ._oracle import unavailable_reason


@pytest.fixture(autouse=True)
def _needs_the_oracle() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
