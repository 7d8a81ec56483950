"""Shared fixtures of the torchplug-cuda tests.

CI has no GPU. The CPU tests play a machine with N GPUs through the plugin's own seams, and say so:
``torchplug_cuda.accelerator._cuda_device_count`` (how many GPUs torch sees) and ``torchplug_cuda._gpus.query_gpus``
(what the driver reports about each GPU: memory, compute mode, processes). Everything else is the real code, the
real Trainer and the real entry points. Tests marked ``gpu`` run only where CUDA is present.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

import torchplug_cuda.accelerator as accelerator_module
from torchplug_cuda import _gpus
from torchplug_cuda._gpus import GPUState


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    """The accelerator sets process-wide flags (cuDNN, CUBLAS_WORKSPACE_CONFIG, the auto-selection record)."""
    env = dict(os.environ)
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``gpus(n)`` makes the plugin believe torch sees ``n`` GPUs (seam: ``_cuda_device_count``)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(accelerator_module, "_cuda_device_count", lambda: n)

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return set_count


def _gpu_state(index: int, pids: tuple[int, ...] = (), mode: str = "Default", used: float = 500.0) -> GPUState:
    return GPUState(
        index=index,
        uuid=f"GPU-{index:x}{index:x}{index:x}-test",
        name="Test GPU 80GB",
        memory_used_mib=used,
        memory_total_mib=81559.0,
        compute_mode=mode,
        pids=pids,
    )


@pytest.fixture
def gpu_state() -> Callable[..., GPUState]:
    """``gpu_state(index, pids=(), mode="Default", used=500.0)``: one GPU as the driver would report it."""
    return _gpu_state


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[GPUState]], list[int]]:
    """``driver(states)`` makes the driver report ``states`` (seam: ``_gpus.query_gpus``); returns a list that
    counts the queries made."""

    def install(states: list[GPUState]) -> list[int]:
        calls: list[int] = []

        def query(processes: bool = True) -> list[GPUState]:
            calls.append(1)
            return [s if processes else GPUState(**{**s.__dict__, "pids": ()}) for s in states]

        monkeypatch.setattr(_gpus, "query_gpus", query)
        return calls

    return install
