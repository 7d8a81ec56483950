"""``torchplug.testing.run_processes``: real spawned processes, a real gloo process group, real failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from torchplug import ProcessFailedError
from torchplug.testing import RankResult, processes_mentioning, run_processes


def gather_ranks(rank, offset):
    tensor = torch.tensor([float(rank + offset)])
    dist.all_reduce(tensor)
    return {"rank": rank, "world": dist.get_world_size(), "sum": tensor.item(), "env": os.environ["RANK"]}


def fail_on_one(rank):
    if rank == 1:
        raise ValueError("rank one cannot go on")
    return "fine"


def hang_on_one(rank):
    if rank == 1:
        time.sleep(600)
    return os.getpid()


def die_on_one(rank, how):
    if rank == 1:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    return rank


def no_group(rank):
    return dist.is_initialized(), os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]


def test_every_rank_answers_in_a_gloo_process_group():
    results = run_processes(gather_ranks, world_size=3, args=(10,), timeout=120)
    assert [r.rank for r in results] == [0, 1, 2] and all(r.ok for r in results)
    assert [r.get() for r in results] == [
        {"rank": rank, "world": 3, "sum": 33.0, "env": str(rank)} for rank in range(3)
    ]


def test_a_rank_that_raises_gives_its_traceback_and_the_others_their_values():
    zero, one = run_processes(fail_on_one, world_size=2, timeout=120)
    assert zero.ok and zero.value == "fine"
    assert not one.ok and "ValueError: rank one cannot go on" in one.error and "Traceback" in one.error
    with pytest.raises(ProcessFailedError, match="(?s)rank 1 failed: Traceback.*ValueError: rank one cannot go on"):
        one.get()


def test_a_rank_that_hangs_is_killed_at_the_timeout():
    start = time.monotonic()
    zero, one = run_processes(hang_on_one, world_size=2, timeout=40, backend=None)
    assert time.monotonic() - start < 100  # the timeout, and the moments it takes to kill them
    assert zero.ok
    assert one.error == "did not finish within 40 s and was killed"
    assert one.exitcode == -signal.SIGKILL


@pytest.mark.parametrize(("how", "expected"), [("kill", "was killed by SIGKILL"),
                                               ("exit", "exited with code 3 without returning")])  # fmt: skip
def test_a_rank_that_dies_is_reported_as_such(how, expected):
    zero, one = run_processes(die_on_one, world_size=2, args=(how,), timeout=120, backend=None)
    assert zero.ok and zero.value == 0
    assert one.error.startswith(expected), one.error


def test_without_a_backend_no_process_group_is_made():
    results = run_processes(no_group, world_size=2, backend=None, timeout=120)
    assert [r.get() for r in results] == [(False, "2", "0"), (False, "2", "1")]


def test_what_cannot_be_pickled_is_refused_before_anything_starts():
    with pytest.raises(TypeError, match="run_processes sends fn and its arguments to each new process by pickling"):
        run_processes(lambda rank: rank, world_size=2)


def test_a_rank_result_is_plain_data():
    result = RankResult(rank=2, value=[1, 2])
    assert result.ok and result.get() == [1, 2]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_processes_mentioning_finds_a_live_process_and_not_a_dead_one(tmp_path):
    marker = str(tmp_path / "marker")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        deadline = time.monotonic() + 10
        while not processes_mentioning(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        [found] = processes_mentioning(marker)
        assert found.startswith(f"{child.pid}: ") and marker in found
    finally:
        child.kill()
        child.wait()
    assert processes_mentioning(marker) == []

