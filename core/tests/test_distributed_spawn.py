"""The spawned processes' answer comes home as data: a result that would run code when unpickled is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchplug import MisconfigurationError
from torchplug.distributed import _spawn
from torchplug.distributed._ports import find_free_port


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _Answer:
    """What rank 0's stage returns: an object whose unpickling would run a shell command in the caller."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self) -> _RunsCode:
        return _RunsCode(self.marker)


def test_a_result_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(MisconfigurationError, match="not loaded back \\(a result file is data, not code\\)"):
        _spawn.spawn(_Answer(str(marker)), num_processes=1, num_nodes=1, node_rank=0, main_address="127.0.0.1",
                     main_port=find_free_port(), start_method="spawn")  # fmt: skip
    assert not marker.exists()
