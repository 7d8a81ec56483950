import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_torchplug_logger():
    logging.getLogger("torchplug").setLevel(logging.WARNING)
    yield
